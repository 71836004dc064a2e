"""A decoded chat turn as OpenAI's response objects: one ``ChatCompletion``, or the chunks of a stream.

Each choice's reply becomes a message: its text, or with tools the ``tool_calls`` parsed from it
(``bot.tools``; ``finish_reason`` "tool_calls") and the text around them. With tools a streamed
choice is sent when it ends, as a content delta and one delta per call, since only the whole reply
tells a call from text. Log-probabilities (``bot.logprobs``) follow a streamed choice's text in one
chunk of their own, before its finish chunk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from bot import protocol
from bot.choices import other_choices
from bot.conversations import ChatTurn
from bot.logprobs import chat_logprobs
from bot.tools import ToolUse
from engine.protocol import Completion


def whole_completion(turn: ChatTurn, others: list[Completion], model: str, use: ToolUse | None,
                     stored_ids: tuple[str | None, str | None]) -> protocol.ChatCompletion:
    """The response to a request that did not stream: ``turn`` is choice 0 (finished), ``others`` 1..n-1."""
    done = turn.completion
    choices = [_choice(0, turn.text, done, turn.finish_reason, use)]
    choices += [_choice(i, c.text, c, c.finish_reason, use) for i, c in enumerate(others, 1)]
    return protocol.ChatCompletion(
        id=protocol.completion_id(), created=int(time.time()), model=model, choices=choices,
        usage=protocol.Usage.of(done.prompt_tokens, done.completion_tokens + sum(c.completion_tokens for c in others)),
        system_fingerprint=protocol.fingerprint(turn.version.id),
        conversation_id=stored_ids[0], message_id=stored_ids[1],
        memory_correction_ids=turn.memory_correction_ids, memory_outcome=turn.memory_outcome,
        conversation_token=turn.conversation_token,
    )


def _choice(index: int, text: str, done: Completion | None, finish_reason: str | None,
            use: ToolUse | None) -> protocol.Choice:
    content, calls = use.parse(text) if use else (text, [])
    return protocol.Choice(index=index, message=protocol.AssistantMessage(content=content, tool_calls=calls or None),
                           logprobs=chat_logprobs(done.logprobs if done else None),
                           finish_reason="tool_calls" if calls else finish_reason)


def choice_streams(turn: ChatTurn) -> list[Iterator[str | Completion]]:
    """Every choice's stream of text deltas ending in its Completion: the turn's first (it is recorded
    as it is read), then the other choices'."""
    return [_turn_stream(turn), *other_choices(turn.source)]


def _turn_stream(turn: ChatTurn) -> Iterator[str | Completion]:
    yield from turn
    yield turn.completion


def choice_chunks(chunks: protocol.ChunkFactory, index: int, stream: Iterator[str | Completion],
                  use: ToolUse | None) -> Iterator[protocol.ChatCompletionChunk | Completion]:
    """One choice's chunks (role, content or tool calls, logprobs, finish), then its Completion (for usage)."""
    yield chunks.delta("", first=True, index=index)
    text, done = "", None
    for item in stream:
        if isinstance(item, Completion):
            done = item
        else:
            text += item
            if use is None:
                yield chunks.delta(item, index=index)
    reason = done.finish_reason
    if use is not None:
        content, calls = use.parse(text)
        reason = "tool_calls" if calls else reason
        yield chunks.delta(content, index=index, tool_calls=calls or None)
    if done.logprobs is not None:
        yield chunks.delta("", index=index, logprobs=chat_logprobs(done.logprobs))
    yield chunks.finish(reason, index)
    yield done
