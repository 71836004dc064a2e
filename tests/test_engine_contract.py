"""One contract for every engine (``engine.protocol.Engine``): the llama.cpp engine, the transformers
engine and the upstream engine (relaying to an OpenAI-compatible server: here tuneloop itself, serving the tiny model
in another process) must stream deltas then one Completion, honour stop and max_tokens, count usage,
and swap to another version while a stream runs without cutting it off."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from engine.backends import engine_for
from engine.protocol import Completion, Engine, SamplingParams, VersionSpec
from support.upstream import serve_tiny_model

# The tiny model's answers are random tokens (often newlines): the repetition guard, which would end
# them early, is off here (repetition_ngram=0), so length, stop and usage are what is tested.
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Can I return boots I bought last month?"}]


@dataclass
class Version:
    """A registry version as engines see it (``engine.protocol.ServedVersion``)."""

    id: str
    name: str
    adapter_path: str | None = None
    hosted_model: str | None = None


V0, V1 = Version("v0", "tuneloop-v0"), Version("v1", "tuneloop-v1-contract", hosted_model="tuneloop")


@pytest.fixture(scope="module")
def upstream_url(tiny_model_dir, tmp_path_factory):
    yield from serve_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("contract-upstream"))


@pytest.fixture(params=["llamacpp", "transformers", "upstream"])
def engine(request, make_settings, tiny_model_dir) -> Engine:
    """Each engine, serving v0; v1 is the same weights under another id (a swap is still a swap)."""
    overrides = {"base_model": str(tiny_model_dir), "serving_backend": request.param}
    if request.param == "upstream":
        overrides.update(serving_backend="upstream", upstream_base_url=request.getfixturevalue("upstream_url"),
                         upstream_model="tuneloop")
    settings = make_settings(**overrides)
    built = engine_for(settings, lambda version: VersionSpec(version.id, tiny_model_dir))
    built.wait_until_available(None, 0.1)
    built.swap(V0)
    assert built.ready and built.serving_id == "v0"
    yield built
    built.close()


def drain(stream) -> tuple[list[str], Completion]:
    deltas, done = [], None
    for item in stream:
        if isinstance(item, Completion):
            done = item
        else:
            assert done is None, "a delta after the Completion"
            deltas.append(item)
    assert done is not None, "the stream ended without a Completion"
    return deltas, done


def test_stream_then_one_completion_with_usage(engine):
    deltas, done = drain(engine.stream(V0, MESSAGES, SamplingParams(max_tokens=12, repetition_ngram=0)))
    assert deltas and "".join(deltas) == done.text
    assert done.version_id == "v0" and done.prompt_tokens > 10 and 0 < done.completion_tokens <= 12
    assert done.finish_reason in ("length", "stop")
    again = engine.generate(V0, MESSAGES, SamplingParams(max_tokens=12, repetition_ngram=0))
    assert again.text == done.text and again.completion_tokens == done.completion_tokens  # greedy: same answer


def test_max_tokens_and_stop(engine):
    full = engine.generate(V0, MESSAGES, SamplingParams(max_tokens=16, repetition_ngram=0))
    assert full.finish_reason == "length" and full.completion_tokens == 16
    short = engine.generate(V0, MESSAGES, SamplingParams(max_tokens=3, repetition_ngram=0))
    assert short.completion_tokens == 3 and full.text.startswith(short.text)
    stop = full.text[len(full.text) // 2:][:2]  # a piece of what the model says (the tiny model: newlines)
    assert stop, f"need a stop string from {full.text!r}"
    stopped = engine.generate(V0, MESSAGES, SamplingParams(max_tokens=16, stop=[stop], repetition_ngram=0))
    assert stopped.finish_reason == "stop" and stopped.text == full.text[:full.text.index(stop)]


def test_swap_while_a_stream_runs(engine):
    params = SamplingParams(max_tokens=24, repetition_ngram=0)
    expected = engine.generate(V0, MESSAGES, params).text
    stream = engine.stream(V0, MESSAGES, params)
    first = next(stream)
    swapper = threading.Thread(target=engine.swap, args=(V1,))
    swapper.start()
    rest, done = drain(stream)
    swapper.join(timeout=120)
    assert first + "".join(rest) == done.text == expected and done.version_id == "v0"
    assert engine.serving_id == "v1"
    assert engine.generate(V1, MESSAGES, SamplingParams(max_tokens=4, repetition_ngram=0)).version_id == "v1"
