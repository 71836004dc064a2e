"""Log-probabilities of the tokens a reply chose, and of the likeliest alternatives at each step.

They are the model's own distribution over its vocabulary (a log-softmax of the logits the engine
decoded), before penalties, ``logit_bias``, temperature, top_p or a grammar reshaped it: what
OpenAI's ``logprobs`` report. Both local engines record them per token with ``record`` when the
request asks (``SamplingParams.logprobs`` is the number of alternatives, 0–20); ``text_stream``
puts them on the ``Completion``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class TokenLogprob:
    """One token of a reply: its text, UTF-8 bytes and log-probability, and the ``top`` alternatives
    (each a TokenLogprob without alternatives), likeliest first."""

    token: str
    logprob: float
    bytes: list[int]
    top: list["TokenLogprob"] = field(default_factory=list)


def record(request: Any, logits: np.ndarray, token: int) -> None:
    """Append ``token``'s log-probability (and the top alternatives) under ``logits`` to
    ``request.token_logprobs``, if the request asked for them."""
    k = request.params.logprobs
    if k is None:
        return
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    top = np.argpartition(-logp, k)[:k] if 0 < k < len(logp) else np.arange(len(logp) if k else 0)
    top = top[np.argsort(-logp[top], kind="stable")]
    decode = request.loaded.tokenizer.decode
    entry = _entry(decode, token, logp[token])
    entry.top = [_entry(decode, int(t), logp[t]) for t in top]
    request.token_logprobs.append(entry)


def _entry(decode: Any, token: int, logprob: float) -> TokenLogprob:
    text = decode([token], skip_special_tokens=False)
    return TokenLogprob(token=text, logprob=max(float(logprob), -9999.0), bytes=list(text.encode("utf-8")))
