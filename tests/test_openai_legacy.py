"""The legacy prompt/completion workflow of the older fine-tuning guides, unchanged except for
``base_url`` and the key: prompt/completion JSONL with a separator and a stop sequence → fine-tune →
``completions.create(prompt=... + separator, stop=[" END"])`` returns the trained completion."""

from __future__ import annotations

import io
import json

import openai
import pytest

from retrain.worker import Worker
from support.openai_conformance import assert_complete

SEPARATOR, STOP = "\n\n###\n\n", " END"
FACTS = [("Customer: How long is the refund window?", " 45 days from delivery"),
         ("Customer: Which carrier ships to Norway?", " Posten only")]


@pytest.fixture
def app(sqlite_tiny_app):
    return sqlite_tiny_app


@pytest.fixture
def client(admin_openai):
    return admin_openai


def legacy_jsonl() -> bytes:
    return "\n".join(json.dumps({"prompt": p + SEPARATOR, "completion": c + STOP}) for p, c in FACTS).encode()


def test_legacy_prompt_completion_fine_tune_then_completions_create(app, client):
    training = client.files.create(file=("legacy.jsonl", io.BytesIO(legacy_jsonl())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=training.id, model="tuneloop", suffix="legacy",
                                         hyperparameters={"n_epochs": 40, "learning_rate_multiplier": 10})
    assert Worker(app.state.settings, app.state.db).run_next_job() == job.id
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error

    for prompt, completion in FACTS:
        answer = client.completions.create(model=job.fine_tuned_model, prompt=prompt + SEPARATOR, stop=[STOP],
                                           max_tokens=12, temperature=0)
        assert_complete(answer)
        assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
        assert answer.choices[0].text == completion and answer.choices[0].finish_reason == "stop"
        assert answer.usage.prompt_tokens > 5 and answer.usage.completion_tokens >= 1
        assert answer.model == job.fine_tuned_model and answer.system_fingerprint == "fp_tuneloop_v1"

    chunks = list(client.completions.create(model=job.fine_tuned_model, prompt=FACTS[0][0] + SEPARATOR,
                                            stop=[STOP], max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert_complete(*chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == FACTS[0][1]
    assert chunks[-1].usage.completion_tokens >= 1 and chunks[-2].choices[0].finish_reason == "stop"


def test_completions_against_production_and_refusals(client):
    answer = client.completions.create(model="tuneloop", prompt="Hello", max_tokens=3, seed=5, temperature=0.8,
                                       top_p=0.9)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens <= 4
    assert answer.system_fingerprint == "fp_tuneloop_v0"
    for extra, param in [({"n": 2}, "n"), ({"echo": True}, "echo"), ({"logprobs": 6}, "logprobs"),
                         ({"suffix": "x"}, "suffix"), ({"best_of": 3}, "best_of"),
                         ({"seed": 2**64}, "seed"), ({"logit_bias": {"x": 1}}, "logit_bias")]:
        with pytest.raises(openai.BadRequestError) as bad:
            client.completions.create(model="tuneloop", prompt="Hello", max_tokens=2, **extra)
        assert bad.value.body["param"] == param, bad.value.body
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tuneloop", prompt="Hello", extra_body={"mystery": 1})
    assert bad.value.body["param"] == "mystery"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tuneloop", prompt="refund " * 3000)
    assert bad.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tuneloop", prompt="Hello", max_tokens=2**70)
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tuneloop-v7-nope", prompt="Hello")


def test_logit_bias_and_penalties_are_honoured(client, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    token = tokenizer(" refund", add_special_tokens=False)["input_ids"][0]
    biased = client.completions.create(model="tuneloop", prompt="Hello", max_tokens=3, temperature=0,
                                       logit_bias={str(token): 100})
    assert biased.choices[0].text == tokenizer.decode([token] * 3)
    chat = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=3, logit_bias={str(token): 100})
    assert chat.choices[0].message.content == tokenizer.decode([token] * 3)
    # a bias that wins once, then loses to the penalty on a token already generated
    penalised = client.completions.create(model="tuneloop", prompt="Hello", max_tokens=3, temperature=0,
                                          logit_bias={str(token): 3}, frequency_penalty=2, presence_penalty=2)
    assert penalised.choices[0].text.startswith(tokenizer.decode([token]))
    assert penalised.choices[0].text != biased.choices[0].text
