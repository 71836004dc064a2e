"""Log-probabilities in OpenAI's two shapes: per token with alternatives (chat), and the legacy
completions' parallel lists. The numbers come from the engine (``engine.logprobs``: the model's own
distribution, before penalties, temperature or a grammar reshaped it)."""

from __future__ import annotations

from pydantic import BaseModel

from engine.logprobs import TokenLogprob


# --- chat --------------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


def chat_logprobs(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    """None when the request did not ask (or the reply was not decoded: a verified answer)."""
    if entries is None:
        return None
    return ChoiceLogprobs(content=[
        ChatTokenLogprob(token=e.token, logprob=e.logprob, bytes=e.bytes,
                         top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top])
        for e in entries
    ])


# --- legacy completions ------------------------------------------------------------------------------
class CompletionLogprobs(BaseModel):
    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]


def completion_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> CompletionLogprobs | None:
    """``offset``: where the first token starts in the text returned so far (a stream's earlier chunks)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return CompletionLogprobs(text_offset=offsets, token_logprobs=[e.logprob for e in entries],
                              tokens=[e.token for e in entries],
                              top_logprobs=[{t.token: t.logprob for t in e.top} for e in entries])
