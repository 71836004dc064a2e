"""Every error is OpenAI's envelope {"error": {message, type, param, code}}: unknown routes and methods,
validation failures (param names the field, no pydantic prefix), out-of-range integers, bad keys."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from support.retrain import admin_key

USER = [{"role": "user", "content": "Hello"}]


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Value error" not in body["error"]["message"]
    return body["error"]


def test_unknown_routes_and_methods_are_in_the_envelope(client):
    error = _error(client.get("/v1/nothing-here"), 404)
    assert error["type"] == "not_found_error" and "/v1/nothing-here" in error["message"]
    wrong_method = client.delete("/v1/chat/completions")
    error = _error(wrong_method, 405)
    assert "POST" in error["message"] and wrong_method.headers["allow"] == "POST"
    _error(client.get("/not-under-v1"), 404)


@pytest.mark.parametrize(("override", "param", "needle"), [
    ({"n": 9}, "n", "less than or equal to 8"),
    ({"top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
    ({"tool_choice": "required"}, "tool_choice", "has no tools"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"seed": 2**63}, "seed", "less than or equal to"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages", "last message must come from the user"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content", "content must be a string"),
])
def test_chat_validation_names_the_param(client, override, param, needle):
    body = {"model": "tuneloop", "messages": USER, "max_tokens": 2, **override}
    error = _error(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param and needle in error["message"] and error["type"] == "invalid_request_error"


def test_missing_field_names_it(client):
    error = _error(client.post("/v1/chat/completions", json={"messages": USER}), 400)
    assert error["param"] == "model" and "required" in error["message"]


def test_job_seed_overflow_is_a_400_naming_seed(client, tiny_app):
    key = admin_key(tiny_app.state.db)
    response = client.post("/v1/fine_tuning/jobs", json={"model": "v0", "training_file": "file-x", "seed": 2**63},
                           headers={"Authorization": f"Bearer {key}"})
    assert _error(response, 400)["param"] == "seed"


def test_out_of_range_limits_are_400s_naming_them(client, tiny_app):
    auth = {"Authorization": f"Bearer {admin_key(tiny_app.state.db)}"}
    for path in ("/v1/fine_tuning/jobs?limit=0", "/v1/files?limit=100000", "/v1/files?limit=99999999999999999999999"):
        assert _error(client.get(path, headers=auth), 400)["param"] == "limit"


def test_a_wrong_or_revoked_key_is_401_even_on_anonymous_routes(client, tiny_app):
    for path, call in (("models", lambda c: c.models.list()),
                       ("chat", lambda c: c.chat.completions.create(model="tuneloop", messages=USER, max_tokens=2))):
        wrong = OpenAI(base_url="http://testserver/v1", api_key="tl-not-a-real-key", http_client=client, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            call(wrong)
        assert caught.value.body["code"] == "invalid_api_key", path
    good = OpenAI(base_url="http://testserver/v1", api_key=admin_key(tiny_app.state.db), http_client=client,
                  max_retries=0)
    assert good.models.list().data


@pytest.mark.parametrize("kind", ["reinforcement", "shouting"])
def test_unsupported_fine_tuning_methods_are_refused_naming_method_type(client, tiny_app, kind):
    key = admin_key(tiny_app.state.db)
    response = client.post("/v1/fine_tuning/jobs", json={"model": "v0", "training_file": "file-x",
                                                         "method": {"type": kind}},
                           headers={"Authorization": f"Bearer {key}"})
    error = _error(response, 400)
    assert error["param"] == "method.type" and "not supported" in error["message"] and kind in error["message"]
