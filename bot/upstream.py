"""Serving through an upstream OpenAI-compatible server (``serving_backend=upstream``).

The upstream (vLLM, llama.cpp, OpenAI itself, or another tuneloop) does the decoding; tuneloop still
builds the prompt (system prompt, stored history), logs every turn and answers with its own API, so
clients and the web chat cannot tell the backends apart. The upstream enforces its own context limit:
its 4xx answers come back to our client as 400 with the upstream's message.

The model asked upstream is the version's ``hosted_model`` (a model fine-tuned on a hosted service)
or else ``upstream_model``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import openai

from bot.engine import Completion, SamplingParams
from bot.models import ModelVersion
from tuneloop.settings import Settings

log = logging.getLogger(__name__)


class UpstreamUnavailableError(RuntimeError):
    """The upstream cannot be reached or failed; callers answer 503 and the client retries."""


class UpstreamRejectedError(ValueError):
    """The upstream refused the request as invalid (context too long, bad parameter): a client error."""


class UpstreamBackend:
    def __init__(self, settings: Settings):
        if not settings.upstream_base_url:
            raise ValueError("serving_backend=upstream needs TUNELOOP_UPSTREAM_BASE_URL (e.g. http://host:8000/v1).")
        self.settings = settings
        self.client = openai.OpenAI(base_url=settings.upstream_base_url, api_key=settings.upstream_api_key,
                                    max_retries=1, timeout=120.0)
        self.reachable = False

    def check(self) -> bool:
        """Ask the upstream for its models; remembers whether it answered."""
        try:
            self.client.models.list()
            self.reachable = True
        except openai.OpenAIError as exc:
            log.warning("upstream %s not reachable: %s", self.settings.upstream_base_url, exc)
            self.reachable = False
        return self.reachable

    def model_for(self, version: ModelVersion) -> str:
        model = version.hosted_model or self.settings.upstream_model
        if not model:
            raise UpstreamUnavailableError(
                f"Version {version.id} has no hosted model and TUNELOOP_UPSTREAM_MODEL is empty; set it to the "
                "upstream's model name."
            )
        return model

    def stream(self, version: ModelVersion, messages: list[dict[str, str]],
               params: SamplingParams) -> Iterator[str | Completion]:
        """Send the request now (so a refusal raises here, before any answer starts); the returned
        iterator yields text deltas, then one Completion."""
        try:
            chunks = self.client.chat.completions.create(
                model=self.model_for(version), messages=messages, stream=True,
                stream_options={"include_usage": True}, max_tokens=params.max_tokens,
                temperature=params.temperature, top_p=params.top_p, stop=params.stop or None,
                seed=params.seed,
            )
        except openai.APIStatusError as exc:
            raise _translate(exc) from exc
        except openai.OpenAIError as exc:
            raise UpstreamUnavailableError(f"The upstream model server failed: {exc}") from exc
        return self._relay(chunks, version.id)

    def generate(self, version: ModelVersion, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
        for item in self.stream(version, messages, params):
            if isinstance(item, Completion):
                return item
        raise UpstreamUnavailableError("The upstream stream ended without an answer.")

    @staticmethod
    def _relay(chunks, version_id: str) -> Iterator[str | Completion]:
        text, finish_reason, usage = "", "stop", None
        try:
            for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        text += choice.delta.content
                        yield choice.delta.content
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except openai.OpenAIError as exc:
            raise UpstreamUnavailableError(f"The upstream stream broke off: {exc}") from exc
        finally:
            chunks.close()
        yield Completion(
            text=text, prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=finish_reason, version_id=version_id,
        )


def _translate(exc: openai.APIStatusError) -> Exception:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = (body.get("error") or body).get("message") if isinstance(body.get("error") or body, dict) else None
    message = message or str(exc)
    if exc.status_code in (400, 413, 422):
        return UpstreamRejectedError(f"The upstream model server rejected the request: {message}")
    return UpstreamUnavailableError(f"The upstream model server answered {exc.status_code}: {message}")
