"""A decoded reply as text: what both local engines (transformers and llama.cpp) do with each new token.

Detokenise, cut at stop strings, hold back what may still become a stop string or half a character,
stop a greedy reply before it repeats a sentence (``engine.repetition``), honour max_tokens, and hand
the deltas and the final ``Completion`` to the caller through the request's queue. One copy, so both
engines give the same text for the same tokens; nothing here needs torch.

A request is any object with ``loaded`` (``tokenizer``, ``eos_ids``, ``spec``), ``params``,
``prompt_ids``, ``generated``, ``decode``, ``emitted``, ``events`` and ``finish_reason``.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from engine import repetition
from engine.protocol import Completion


def request_events(events: queue.Queue[tuple[str, Any]]) -> Iterator[str | Completion]:
    """What a decode thread put on a request's queue, as the caller's stream: text deltas, then the
    Completion; an error raised by the decode thread is raised here.

    Deltas already waiting go out as one: a consumer that fell behind (an event loop serving many
    streams on the cores the decode needs) catches up in one hand-off and one SSE chunk, not one per
    token. The text is the same; only where it is cut into chunks differs."""
    pending: tuple[str, Any] | None = None
    while True:
        kind, value = pending or events.get()
        pending = None
        if kind == "delta":
            while pending is None:
                try:
                    more = events.get_nowait()
                except queue.Empty:
                    break
                if more[0] == "delta":
                    value += more[1]
                else:
                    pending = more
            yield value
        elif kind == "done":
            yield value
            return
        else:
            raise value


def advance(request: Any, token: int) -> bool:
    """Record one token; emit the new text; return False when the request is finished."""
    loaded, params = request.loaded, request.params
    if token in loaded.eos_ids:
        return finish(request, "stop")
    request.generated.append(token)
    text = loaded.tokenizer.decode(request.generated, skip_special_tokens=True)
    for stop in params.stop:
        cut = text.find(stop)
        if cut != -1:
            emit(request, text[:cut])
            return finish(request, "stop")
    shown = len(text)
    if params.repetition_ngram and params.temperature <= 0:
        shown, loops = repetition.guard(request.generated, text, request.decode, params.repetition_ngram)
        if loops:  # the reply ends before the repeat (which was held back, never streamed)
            return finish(request, "stop", text[:shown])
    if not text.endswith("\ufffd"):  # hold back half a multi-byte character
        held = max((len(s) - 1 for s in params.stop), default=0)  # a stop string may be forming
        emit(request, text[: min(shown, len(text) - held)])
    if len(request.generated) >= params.max_tokens:
        emit(request, text)
        return finish(request, "length")
    return True


def emit(request: Any, text: str) -> None:
    if len(text) > len(request.emitted) and text.startswith(request.emitted):
        request.events.put(("delta", text[len(request.emitted):]))
        request.emitted = text


def finish(request: Any, reason: str, text: str | None = None) -> bool:
    """End the request with ``text`` (default: everything decoded, cut at a stop string)."""
    if text is not None:
        emit(request, text)
    else:
        text = request.loaded.tokenizer.decode(request.generated, skip_special_tokens=True)
    if reason == "stop":
        for stop in request.params.stop:
            if stop in text:
                text = text[: text.find(stop)]
    emit(request, text)
    request.finish_reason = reason
    if getattr(request, "grammar", None) is not None:
        request.grammar.close()
    logprobs = getattr(request, "token_logprobs", None)
    request.events.put((
        "done",
        Completion(
            text=request.emitted, prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.generated) + (1 if reason == "stop" else 0),
            finish_reason=reason, version_id=request.loaded.spec.id,
            logprobs=logprobs[:len(request.generated)] if request.params.logprobs is not None else None,
        ),
    ))
    return False
