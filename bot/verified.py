"""Verified replies: the approved answer itself, streamed like a decoded one.

Correction memory (``feedback.memory``) decides that a turn gets an approved answer verbatim; serving
then skips the model and streams that text word by word, ending in a ``Completion`` with honest token
counts: the prompt the model would have read (system prompt and history, trimmed as usual) and the
answer, both in the served model's tokenizer. ``max_tokens`` and ``stop`` apply as they would to a
decoded answer (``finish_reason`` "length" or "stop").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from engine.protocol import Completion, SamplingParams

CHARS_PER_TOKEN = 4  # estimate when no tokenizer is at hand (upstream serving)
_PIECE_RE = re.compile(r"\s*\S+")


def verified_stream(answer: str, params: SamplingParams, *, prompt_tokens: int, version_id: str,
                    tokenizer: Any = None) -> Iterator[str | Completion]:
    """Yield ``answer`` in word-sized deltas, then its Completion."""
    text, finish = _apply_stop(answer, params.stop)
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > params.max_tokens:
            text, finish, ids = tokenizer.decode(ids[: params.max_tokens]), "length", ids[: params.max_tokens]
        completion_tokens = len(ids)
    else:
        completion_tokens = max(1, -(-len(text) // CHARS_PER_TOKEN))
        if completion_tokens > params.max_tokens:
            text, finish = text[: params.max_tokens * CHARS_PER_TOKEN], "length"
            completion_tokens = params.max_tokens
    return _pieces(text, Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                    finish_reason=finish, version_id=version_id))


def _pieces(text: str, done: Completion) -> Iterator[str | Completion]:
    yield from _PIECE_RE.findall(text)
    yield done


def _apply_stop(text: str, stop: list[str]) -> tuple[str, str]:
    cuts = [text.index(s) for s in stop if s and s in text]
    return (text[: min(cuts)], "stop") if cuts else (text, "stop")
