"""A request's own fault is a 400, never a 5xx: a ``logit_bias`` token id beyond the served model's
vocabulary (the probe sent ``{"50256": -100}``, GPT-2's end of text) is refused before decoding, on chat
and legacy completions, streamed or not, naming ``logit_bias``. It used to be a 503 "Generation failed:
index … out of bounds", which the official client retries twice."""

from __future__ import annotations

import openai
import pytest
from sqlmodel import Session, func, select

from bot.models import Message

OUTSIDE = {"50256": -100}  # the tiny model has SmolLM2's 49152 tokens


def _messages(app) -> int:
    with Session(app.state.db) as session:
        return session.exec(select(func.count()).select_from(Message)).one()


@pytest.mark.parametrize("stream", [False, True])
def test_a_token_outside_the_vocabulary_is_a_400_naming_logit_bias(admin_openai, sqlite_tiny_app, stream):
    before = _messages(sqlite_tiny_app)
    calls = [
        lambda: admin_openai.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=3, logit_bias=OUTSIDE, stream=stream),
        lambda: admin_openai.completions.create(model="tuneloop", prompt="Hello", max_tokens=3, logit_bias=OUTSIDE,
                                                stream=stream),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        error = refused.value.body
        assert refused.value.status_code == 400 and error["param"] == "logit_bias", error
        assert "50256" in error["message"] and "vocabulary" in error["message"]
    assert _messages(sqlite_tiny_app) == before  # refused before anything is stored
    within = admin_openai.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=2, logit_bias={"49151": -100})
    assert within.choices[0].finish_reason in ("stop", "length")
