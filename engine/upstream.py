"""Serving through an upstream OpenAI-compatible server (``serving_backend=upstream``).

The upstream (vLLM, llama.cpp, OpenAI itself, or another tuneloop) does the decoding; tuneloop still
builds the prompt (system prompt, stored history), logs every turn and answers with its own API, so
clients and the web chat cannot tell the backends apart. The upstream enforces its own context limit:
its 4xx answers come back to our client as 400 with the upstream's message.

The model asked upstream is the version's ``hosted_model`` (a model fine-tuned on a hosted service)
or else ``upstream_model``. With ``upstream_lora_loading`` (vLLM started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) a version with a LoRA adapter is asked for by its name,
after the adapter was loaded into vLLM with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``
(``lora_path`` is the adapter directory as vLLM sees it: ``upstream_model_store_dir``). The runtime
loads the adapter before it switches to a promoted version, so a refusal keeps the old version serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import httpx
import openai

from engine.protocol import (AnswerScore, Completion, CompletionsUnavailableError, SamplingParams, ScoringUnavailableError,
                             ServedVersion)
from tuneloop.core import errors
from tuneloop.core.settings import Settings

log = logging.getLogger(__name__)


class UpstreamUnavailableError(errors.UnavailableError):
    """The upstream cannot be reached or failed; callers answer 503 and the client retries."""

    code = "model_not_ready"


class UpstreamRejectedError(errors.InvalidInputError):
    """The upstream refused the request as invalid (context too long, bad parameter): a client error."""

    param = "messages"


class UpstreamAdapterError(UpstreamUnavailableError):
    """The upstream did not load a version's LoRA adapter (refused it, or could not be reached)."""


class UpstreamEngine:
    """``engine.protocol.Engine`` over any OpenAI-compatible server (vLLM on a GPU, a hosted API):
    generation is relayed; with ``upstream_lora_loading`` the upstream loads each version's adapter."""

    def __init__(self, settings: Settings):
        if not settings.upstream_base_url:
            raise ValueError("serving_backend=upstream needs TUNELOOP_UPSTREAM_BASE_URL (e.g. http://host:8000/v1).")
        self.settings = settings
        self.client = openai.OpenAI(base_url=settings.upstream_base_url, api_key=settings.upstream_api_key,
                                    max_retries=1, timeout=120.0)
        self.reachable = False
        base = settings.upstream_base_url.rstrip("/")
        self.root_url = base.removesuffix("/v1")
        self._adapters: set[str] = set()  # LoRA names the upstream confirmed loaded
        self._adapter_lock = threading.Lock()
        self.serving_id: str | None = None  # the version relayed as production

    # --- Engine --------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.reachable

    def wait_until_available(self, stop: threading.Event | None, poll_seconds: float) -> None:
        while not self.check() and stop is not None and not stop.wait(poll_seconds):
            pass

    def prepare(self, version: ServedVersion) -> None:
        """Load the version's adapter before production moves, so a refusal stops the promotion."""
        self.model_for(version)

    def swap(self, version: ServedVersion) -> None:
        self.model_for(version)  # the upstream loads the version's adapter (or refuses: raises)
        self.serving_id = version.id

    def stream_prompt(self, version: ServedVersion, prompt: str, params: SamplingParams) -> Iterator[str | Completion]:
        raise CompletionsUnavailableError("legacy completions need a local engine; this server relays chats to an "
                                          "upstream (TUNELOOP_ENGINE=upstream): use /v1/chat/completions")

    def count_prompt_tokens(self, version: ServedVersion, messages: list[dict[str, str]],
                            max_tokens: int) -> tuple[int, Any]:
        """An estimate (about four characters a token): the upstream's tokenizer is not at hand."""
        return max(1, -(-sum(len(m["content"]) for m in messages) // 4)), None

    def score_answers(self, version: ServedVersion, conversations: list[list[dict[str, str]]],
                      answers: list[str], answer_tokens: int | None = None) -> list[AnswerScore]:
        """An OpenAI-compatible chat API returns no log-likelihood of a given reply."""
        raise ScoringUnavailableError("the upstream backend cannot score answers; memory selects by retrieval alone")

    def close(self) -> None:
        """Nothing runs in the background."""

    def check(self) -> bool:
        """Ask the upstream for its models; remembers whether it answered."""
        try:
            self.client.models.list()
            self.reachable = True
        except openai.OpenAIError as exc:
            log.warning("upstream %s not reachable: %s", self.settings.upstream_base_url, exc)
            self.reachable = False
        return self.reachable

    def model_for(self, version: ServedVersion) -> str:
        """The upstream's name for ``version``; with ``upstream_lora_loading`` its LoRA adapter is loaded
        into the upstream first (once per process). Raises ``UpstreamAdapterError`` if that fails."""
        if self.settings.upstream_lora_loading and version.adapter_path and not version.hosted_model:
            return self.load_adapter(version)
        model = version.hosted_model or self.settings.upstream_model
        if not model:
            raise UpstreamUnavailableError(
                f"Version {version.id} has no hosted model and TUNELOOP_UPSTREAM_MODEL is empty; set it to the "
                "upstream's model name."
            )
        return model

    def stream(self, version: ServedVersion, messages: list[dict[str, str]],
               params: SamplingParams) -> Iterator[str | Completion]:
        """Send the request now (so a refusal raises here, before any answer starts); the returned
        iterator yields text deltas, then one Completion."""
        _refuse_unrelayed(params)
        try:
            try:
                chunks = self._create(version, messages, params)
            except openai.NotFoundError:
                if not self._forget_adapter(version):
                    raise
                chunks = self._create(version, messages, params)  # loads the adapter again, once
        except openai.APIStatusError as exc:
            raise _translate(exc) from exc
        except openai.OpenAIError as exc:
            raise UpstreamUnavailableError(f"The upstream model server failed: {exc}") from exc
        return self._relay(chunks, version.id)

    def _create(self, version: ServedVersion, messages: list[dict[str, str]], params: SamplingParams):
        return self.client.chat.completions.create(
            model=self.model_for(version), messages=messages, stream=True,
            stream_options={"include_usage": True}, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, stop=params.stop or None,
            seed=params.seed, **_logit_controls(params),
            **({"response_format": params.response_format} if params.response_format else {}),
        )

    # --- LoRA adapters (vLLM) ----------------------------------------------------------------------
    def adapter_path(self, version: ServedVersion) -> str:
        """The version's adapter directory as the upstream sees it."""
        if self.settings.upstream_model_store_dir:
            return str(PurePosixPath(self.settings.upstream_model_store_dir) / version.adapter_path)
        return str((self.settings.model_store_dir / version.adapter_path).resolve())

    def load_adapter(self, version: ServedVersion) -> str:
        """Load ``version``'s LoRA adapter into the upstream under the version's name (idempotent:
        vLLM's "already been loaded" counts as loaded). Returns the name to ask for."""
        name = version.name
        with self._adapter_lock:
            if name in self._adapters:
                return name
            url, path = f"{self.root_url}/v1/load_lora_adapter", self.adapter_path(version)
            try:
                response = httpx.post(url, json={"lora_name": name, "lora_path": path}, timeout=120.0,
                                      headers={"Authorization": f"Bearer {self.settings.upstream_api_key}"})
            except httpx.HTTPError as exc:
                raise UpstreamAdapterError(f"Could not reach {url} to load the LoRA adapter of {version.id}: "
                                           f"{exc.__class__.__name__}: {exc}") from exc
            message = _response_message(response)
            if not (response.is_success or (response.status_code == 400 and "already" in message.lower())):
                raise UpstreamAdapterError(
                    f"The upstream refused to load the LoRA adapter of {version.id} ({name!r} from {path}): "
                    f"HTTP {response.status_code}: {message}. Check that vLLM runs with --enable-lora, "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and a --max-lora-rank at least the adapter's rank, "
                    "and sees the model store at TUNELOOP_UPSTREAM_MODEL_STORE_DIR.")
            self._adapters.add(name)
            log.info("upstream loaded the LoRA adapter of %s as %r from %s", version.id, name, path)
            return name

    def _forget_adapter(self, version: ServedVersion) -> bool:
        """After a 404 for an adapter we loaded (the upstream restarted and lost it): forget it, so the
        next request loads it again. False when the 404 was about something else."""
        with self._adapter_lock:
            if version.name not in self._adapters:
                return False
            self._adapters.discard(version.name)
        log.warning("upstream no longer knows the LoRA adapter %r (restarted?); loading it again", version.name)
        return True

    def generate(self, version: ServedVersion, messages: list[dict[str, str]], params: SamplingParams) -> Completion:
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


def _response_message(response: httpx.Response) -> str:
    """The error message of an upstream answer: OpenAI's envelope, vLLM's older flat one, or the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        inner = body["error"] if isinstance(body.get("error"), dict) else body
        return str(inner.get("message") or inner.get("detail") or body)[:500]
    return str(body)[:500]


def _translate(exc: openai.APIStatusError) -> Exception:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = (body.get("error") or body).get("message") if isinstance(body.get("error") or body, dict) else None
    message = message or str(exc)
    if exc.status_code in (400, 413, 422):
        return UpstreamRejectedError(f"The upstream model server rejected the request: {message}")
    return UpstreamUnavailableError(f"The upstream model server answered {exc.status_code}: {message}")


def _refuse_unrelayed(params: SamplingParams) -> None:
    """What this engine does not relay is a 400 naming it: log-probabilities, and grammars of ours (tool
    calls); ``response_format`` itself is passed on for the upstream to enforce."""
    if params.logprobs is not None:
        raise errors.InvalidInputError("the upstream engine does not relay log-probabilities; leave logprobs unset",
                                param="logprobs")
    if params.grammar and not params.response_format:
        raise errors.InvalidInputError("the upstream engine cannot constrain decoding here", param=params.grammar_param)


def _logit_controls(params: SamplingParams) -> dict:
    """Penalties and logit bias, sent only when the caller set them (the upstream applies them)."""
    controls = {"frequency_penalty": params.frequency_penalty or None, "presence_penalty": params.presence_penalty or None,
                "logit_bias": {str(k): v for k, v in params.logit_bias.items()} or None}
    return {k: v for k, v in controls.items() if v is not None}
