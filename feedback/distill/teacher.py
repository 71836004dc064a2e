"""The teacher: a stronger model behind any OpenAI-compatible chat endpoint (OpenAI, a vLLM server,
or, as a last resort, this tuneloop server's own production model), reached with the official
``openai`` client.

The client retries 429, 5xx and lost connections itself, with exponential backoff that honours
``Retry-After`` (``settings.teacher_max_retries`` times). Whatever still fails becomes one
``TeacherError`` whose message names the setting to fix. Token use comes from the reply's ``usage``
(estimated from characters when a server leaves it out).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from feedback.errors import FeedbackError
from tuneloop.core.settings import Settings

CHARS_PER_TOKEN = 4  # rough count for estimates and for servers that report no usage
TIMEOUT_SECONDS = 120.0
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class TeacherError(FeedbackError):
    """The teacher cannot be used: not configured, unreachable, refused the key, or kept failing.
    The API answers 502; the message says which setting to check."""


@dataclass(frozen=True)
class TeacherConfig:
    base_url: str
    api_key: str
    model: str
    own_server: bool  # no teacher configured: this server's production model

    def describe(self) -> str:
        if self.own_server:
            return (f"{self.model} at {self.base_url} (this server's own production model: a weak teacher; "
                    "set TUNELOOP_TEACHER_BASE_URL and TUNELOOP_TEACHER_MODEL for a stronger one)")
        return f"{self.model} at {self.base_url}"


@dataclass
class TeacherReply:
    text: str
    prompt_tokens: int
    completion_tokens: int


def teacher_config(settings: Settings) -> TeacherConfig:
    """The configured teacher, or this server's production model through its own API."""
    key = settings.teacher_api_key or "not-needed"
    if settings.teacher_base_url:
        if not settings.teacher_model:
            raise TeacherError("TUNELOOP_TEACHER_BASE_URL is set but TUNELOOP_TEACHER_MODEL is empty; "
                               "set it to the teacher's model name")
        return TeacherConfig(settings.teacher_base_url.rstrip("/"), key, settings.teacher_model, own_server=False)
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    return TeacherConfig(f"http://{host}:{settings.port}/v1", key, settings.teacher_model or settings.production_alias,
                         own_server=True)


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


class Teacher:
    """One client per run; ``complete`` sends one chat completion and returns its text and usage."""

    def __init__(self, settings: Settings):
        from openai import OpenAI

        self.config = teacher_config(settings)
        self.retries = settings.teacher_max_retries
        self.client = OpenAI(base_url=self.config.base_url, api_key=self.config.api_key, max_retries=self.retries,
                             timeout=TIMEOUT_SECONDS)

    def complete(self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int) -> TeacherReply:
        import openai

        try:
            response = self.client.chat.completions.create(model=self.config.model, messages=messages,
                                                           temperature=temperature, max_tokens=max_tokens)
        except openai.APIConnectionError as exc:  # includes timeouts
            raise TeacherError(f"cannot reach the teacher at {self.config.base_url} ({exc}) after {self.retries} "
                               "retries; check TUNELOOP_TEACHER_BASE_URL and that the server is running") from exc
        except openai.APIStatusError as exc:
            raise TeacherError(self._status_message(exc)) from exc
        text = (response.choices[0].message.content or "") if response.choices else ""
        usage = response.usage
        if usage is None:
            prompt = sum(estimate_tokens(m["content"]) for m in messages)
            return TeacherReply(text, prompt, estimate_tokens(text))
        return TeacherReply(text, usage.prompt_tokens or 0, usage.completion_tokens or 0)

    def _status_message(self, exc: Any) -> str:
        where, status, detail = self.config.base_url, exc.status_code, _provider_message(exc)
        if status in (401, 403):
            return (f"the teacher at {where} refused the API key ({status}: {detail}); "
                    "set TUNELOOP_TEACHER_API_KEY")
        if status == 404:
            return (f"the teacher at {where} answered 404 ({detail}); check TUNELOOP_TEACHER_MODEL "
                    f"({self.config.model!r}) and that TUNELOOP_TEACHER_BASE_URL ends in /v1")
        if status == 429:
            return (f"the teacher at {where} is still rate-limiting after {self.retries} retries ({detail}); "
                    "resume the run later or raise TUNELOOP_TEACHER_MAX_RETRIES")
        if status >= 500:
            return f"the teacher at {where} failed with {status} after {self.retries} retries ({detail}); resume later"
        return f"the teacher at {where} refused the request ({status}: {detail})"


def _provider_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)


def json_items(text: str) -> tuple[list[Any], bool]:
    """The items of the JSON array in a teacher's reply, tolerating code fences, prose around the
    array, an object wrapping it (``{"pairs": [...]}``) and a reply cut off mid-array (the complete
    items are kept). Returns the items and whether something was unusable (no array, or a cut-off tail)."""
    text = _FENCE_RE.sub("", text.strip())
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        return whole, False
    if isinstance(whole, dict):
        lists = [v for v in whole.values() if isinstance(v, list)]
        return (lists[0], False) if lists else ([], True)
    start = text.find("[")
    if start < 0:
        return [], True
    decoder, items, pos = json.JSONDecoder(), [], start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos < len(text) and text[pos] == "]":
            return items, False
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return items, True
        items.append(item)
