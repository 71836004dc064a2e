"""The repetition guard of greedy decoding (engine.repetition): a reply stops before a sentence it
already said or a phrase loop, the repeat is never streamed, and the tiny model's greedy loops end."""

from __future__ import annotations

import pytest

from engine.protocol import Completion, SamplingParams, VersionSpec
from engine.transformers_model import LoadedModel, TransformersDecoder
from engine.prompting import prompt_ids
from engine.repetition import guard, repeated_ngram_start, repeated_sentence_start, repeating_suffix, sentence_holdback

LOOP = "You can return items within 30 days. Refunds take 5 business days. Refunds take 5 business days."


def test_a_repeated_sentence_is_found_where_it_starts():
    first = "You can return items within 30 days. Refunds take 5 business days. "
    assert repeated_sentence_start(first + "Refunds take 5 business days.") == len(first)
    assert repeated_sentence_start(first + "refunds  take 5 business days!") == len(first)  # case, spacing, mark
    assert repeated_sentence_start(first + "Refunds take 5 business days") is None  # not finished yet
    assert repeated_sentence_start(first + "Refunds take 7 business days.") is None
    assert repeated_sentence_start("Steps:\n1. Open the box.\n2. Open the lid.") is None  # "1." is no sentence


def test_a_sentence_that_may_become_a_repeat_is_held_back():
    first = "You can return items within 30 days. Refunds take 5 business days. "
    assert sentence_holdback(first + "Refunds take") == len(first)
    assert sentence_holdback(first + "Refunds are") == len(first + "Refunds are")  # diverged: shown
    assert sentence_holdback("Hello there") == len("Hello there")


def test_phrase_loops_are_found_and_their_start_held_back():
    tokens = [1, 2, 3, 4, 5, 6, 2, 3, 4]
    assert repeated_ngram_start(tokens, 3) == 6 and repeated_ngram_start(tokens, 4) is None
    assert repeating_suffix(tokens, 4) == 3 and repeating_suffix([1, 2, 3], 4) == 0


def test_guard_ends_the_reply_at_the_first_repeated_sentence_or_phrase():
    words = LOOP.split(" ")
    decode = lambda ids: " ".join(words[:len(ids)])  # noqa: E731  (one "token" per word)
    shown, stops = guard(list(range(len(words))), LOOP, decode, ngram=50)
    assert stops and LOOP[:shown] == "You can return items within 30 days. Refunds take 5 business days."
    # A phrase looping inside one sentence stops at the loop's second turn.
    tokens = [7, 8, 9, 10, 11, 9, 10, 11, 9, 10, 11]
    shown, stops = guard(tokens, "x" * 11, lambda ids: "x" * len(ids), ngram=3)
    assert stops and shown == 8  # the last [9, 10, 11] (from token 8 on) repeats: the reply ends before it


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = LoadedModel.load(VersionSpec("tiny", tiny_model_dir), dtype="float32")
    engine = TransformersDecoder(loaded)
    yield loaded, engine
    engine.close()


def _reply(tiny, ngram: int) -> tuple[Completion, str]:
    loaded, engine = tiny
    ids = prompt_ids(loaded.tokenizer, [{"role": "user", "content": "How long do I have to return an item?"}])
    streamed, final = "", None
    for item in engine.stream(ids, SamplingParams(max_tokens=96, temperature=0, repetition_ngram=ngram)):
        if isinstance(item, Completion):
            final = item
        else:
            streamed += item
    return final, streamed


def _loops(tokens: list[int], n: int = 10) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) < len(grams)


def test_greedy_loops_of_the_tiny_model_stop_and_are_never_streamed(tiny):
    loaded, _engine = tiny
    encode = lambda text: loaded.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    unguarded, _ = _reply(tiny, 0)
    assert unguarded.finish_reason == "length" and _loops(encode(unguarded.text))  # a random model loops
    guarded, streamed = _reply(tiny, 10)
    assert guarded.finish_reason == "stop" and guarded.completion_tokens < 96
    assert streamed == guarded.text  # what was streamed is the reply: the repeat was held back
    assert unguarded.text.startswith(guarded.text)
    assert not _loops(encode(guarded.text)) and repeated_sentence_start(guarded.text) is None
