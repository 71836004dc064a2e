"""Several answers to one request (OpenAI's ``n``), decoded together.

The runtime starts ``n`` engine streams at once, so both local engines batch them (one decode step
carries the next token of each); choice ``i`` samples with ``seed + i`` when a seed is given, so the
answers differ yet repeat. Choice 0 is the turn that is recorded (``bot.conversations``: its
``message_id`` rates it); the others are returned, never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from engine.protocol import Completion, SamplingParams

MAX_CHOICES = 8


class MultiChoice:
    """Iterates as choice 0's stream; ``others`` are the streams of choices 1..n-1. ``close`` ends
    choice 0 only (the turn closes it when recorded); ``close_others(source)`` ends the rest."""

    def __init__(self, streams: list[Iterator[str | Completion]]):
        self.first, self.others = streams[0], streams[1:]

    def __iter__(self) -> Iterator[str | Completion]:
        return self

    def __next__(self) -> str | Completion:
        return next(self.first)

    def close(self) -> None:
        _close(self.first)


def start_choices(open_stream: Callable[[SamplingParams], Iterator[str | Completion]],
                  params: SamplingParams) -> Iterator[str | Completion]:
    """One stream for ``params.n`` = 1, else a ``MultiChoice`` of n streams started before any is read."""
    if params.n <= 1:
        return open_stream(params)
    return MultiChoice([open_stream(choice_params(params, i)) for i in range(params.n)])


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    return replace(params, n=1, seed=None if params.seed is None else params.seed + index)


def other_choices(source: object) -> list[Iterator[str | Completion]]:
    """The streams of choices 1..n-1 behind a turn's source (none for n=1)."""
    return source.others if isinstance(source, MultiChoice) else []


def drain(stream: Iterator[str | Completion]) -> Completion:
    return next(item for item in stream if isinstance(item, Completion))


def close_others(source: object) -> None:
    """End choices 1..n-1 (a client that went away frees their sequences too)."""
    for stream in other_choices(source):
        _close(stream)


def _close(stream: object) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()
