"""The chat API in full, driven with the official openai client on both local engines: structured
outputs (``chat.completions.parse`` with a pydantic model), log-probabilities, several choices and a
tool-call round trip. ``transformers`` serves the tiny random model (what it answers is noise, but
held to the grammar it parses), ``llamacpp`` the bundled SmolLM2. Every parsed object is checked for
all the fields the client's models require (``assert_complete``)."""

from __future__ import annotations

import json
import math
from typing import Literal

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import BaseModel, Field

from support.openai_conformance import assert_complete

USER = [{"role": "user", "content": "My order A1234 has not arrived. Where is it?"}]
ORDER_STATUS = {"type": "function", "function": {
    "name": "get_order_status", "description": "Look up where an order is.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "maxLength": 12}},
                   "required": ["order_id"], "additionalProperties": False}}}
OPEN_TICKET = {"type": "function", "function": {
    "name": "open_ticket", "description": "Open a support ticket for staff.",
    "parameters": {"type": "object", "properties": {"urgent": {"type": "boolean"},
                                                    "topic": {"enum": ["delivery", "refund", "other"]}},
                   "required": ["urgent", "topic"], "additionalProperties": False}}}


class Ticket(BaseModel):
    category: Literal["shipping", "returns", "other"]
    urgent: bool
    summary: str = Field(max_length=40)


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def served(request, tmp_path_factory, tiny_model_dir):
    """(engine name, app): transformers on the tiny model, llama.cpp on the bundled SmolLM2."""
    from tuneloop.app import create_app
    from tuneloop.core.settings import Settings

    engine = request.param
    model = tiny_model_dir if engine == "transformers" else request.getfixturevalue("real_model_dir")
    tmp = tmp_path_factory.mktemp(engine)
    settings = Settings(data_dir=tmp / "data", database_url=f"sqlite:///{tmp / 'tuneloop.db'}", dtype="float32",
                        admin_password="admin-password", version_poll_seconds=0.2, base_model=str(model),
                        serving_backend=engine, max_batch_size=4)
    app = create_app(settings, load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    yield engine, app
    app.state.runtime.stop()
    app.state.db.dispose()


@pytest.fixture(scope="module")
def chat(served):
    with TestClient(served[1]) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


# --- structured outputs --------------------------------------------------------------------------
def test_parse_fills_a_pydantic_model(chat):
    completion = chat.chat.completions.parse(model="tuneloop", messages=USER, response_format=Ticket, max_tokens=120)
    assert_complete(completion)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Ticket)
    assert Ticket.model_validate_json(choice.message.content) == choice.message.parsed
    assert completion.memory_outcome is None  # a reply held to a grammar is always decoded


def test_json_object_replies_parse(chat, served):
    if served[0] == "transformers":
        pytest.skip("any JSON object: the tiny random model may never close one within max_tokens")
    reply = chat.chat.completions.create(
        model="tuneloop", max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply in JSON with the key "answer": do you ship to Canada?'}])
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_a_schema_keyword_the_grammar_cannot_enforce_is_named(chat):
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 18}}, "required": ["age"]}
    with pytest.raises(openai.BadRequestError) as bad:
        chat.chat.completions.create(model="tuneloop", messages=USER, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    assert bad.value.body["param"] == "response_format.json_schema.schema.properties.age.minimum"
    assert "minimum" in bad.value.body["message"]


# --- log-probabilities -----------------------------------------------------------------------------
def test_top_logprobs_are_the_models_own_and_greedy_picks_the_first(chat):
    reply = chat.chat.completions.create(model="tuneloop", messages=USER, max_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=5)
    assert_complete(reply)
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens - (reply.choices[0].finish_reason == "stop")  # + end token
    for token in tokens:
        assert len(token.top_logprobs) == 5 and token.bytes == list(token.token.encode())
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
        assert (token.token, token.logprob) == (token.top_logprobs[0].token, token.top_logprobs[0].logprob)
        assert sum(math.exp(t.logprob) for t in token.top_logprobs) <= 1 + 1e-6
    streamed = list(chat.chat.completions.create(model="tuneloop", messages=USER, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=5, stream=True))
    assert_complete(*streamed)
    chunks = [c.choices[0].logprobs.content for c in streamed if c.choices and c.choices[0].logprobs]
    assert [t.token for chunk in chunks for t in chunk] == [t.token for t in tokens]


def test_completions_logprobs(chat):
    answer = chat.completions.create(model="tuneloop", prompt="Our store opens at", max_tokens=4, temperature=0,
                                     logprobs=3)
    assert_complete(answer)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) \
        == answer.usage.completion_tokens - (answer.choices[0].finish_reason == "stop")
    assert logprobs.text_offset[0] == 0 and all(0 < len(top) <= 3 for top in logprobs.top_logprobs)
    assert all(top[token] == value for token, value, top in
               zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs))


# --- several choices ---------------------------------------------------------------------------------
def test_n_choices_are_decoded_together_and_repeat_with_a_seed(chat, served):
    ask = dict(model="tuneloop", messages=USER, max_tokens=6, temperature=1.0, seed=7, n=3)
    reply = chat.chat.completions.create(**ask)
    assert_complete(reply)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1 and reply.message_id is not None  # choice 0 is the stored one
    # llama.cpp's logits shift a little with the batch and the prompt cache: a seed need not repeat there
    repeats = served[0] == "transformers"
    if repeats:
        assert [c.message.content for c in chat.chat.completions.create(**ask).choices] == texts
    else:
        assert served[1].state.runtime.engine.peak_batch >= 3
    chunks = list(chat.chat.completions.create(**{**ask, "n": 2}, stream=True, stream_options={"include_usage": True}))
    assert_complete(*chunks)
    streamed = [("".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i))
                for i in (0, 1)]
    assert all(streamed) and (streamed == texts[:2] or not repeats)
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1]


# --- tools ---------------------------------------------------------------------------------------------
def test_a_tool_call_round_trip(chat):
    first = chat.chat.completions.create(model="tuneloop", messages=USER, tools=[ORDER_STATUS, OPEN_TICKET],
                                         tool_choice="required", parallel_tool_calls=False, max_tokens=60)
    assert_complete(first)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_order_status":
        assert set(arguments) == {"order_id"} and len(arguments["order_id"]) <= 12
    else:
        assert call.function.name == "open_ticket" and arguments["topic"] in ("delivery", "refund", "other")
    messages = [*USER, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped on Monday"}'}]
    final = chat.chat.completions.create(model="tuneloop", messages=messages, tools=[ORDER_STATUS, OPEN_TICKET],
                                         tool_choice="none", max_tokens=12)
    assert_complete(final)
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content


def test_a_named_tool_is_called_and_streamed_as_tool_call_deltas(chat):
    chunks = list(chat.chat.completions.create(
        model="tuneloop", messages=USER, tools=[ORDER_STATUS, OPEN_TICKET], max_tokens=60, stream=True,
        tool_choice={"type": "function", "function": {"name": "open_ticket"}}, parallel_tool_calls=False))
    assert_complete(*chunks)
    calls = [call for c in chunks if c.choices and c.choices[0].delta.tool_calls for call in c.choices[0].delta.tool_calls]
    assert calls and {call.function.name for call in calls} == {"open_ticket"}
    assert all(call.id.startswith("call_") and call.type == "function" for call in calls)
    assert set(json.loads(calls[0].function.arguments)) == {"urgent", "topic"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_parameters_the_grammar_cannot_enforce_are_named(chat):
    tool = {"type": "function", "function": {"name": "refund", "parameters": {
        "type": "object", "properties": {"amount": {"type": "number", "multipleOf": 0.01}}}}}
    with pytest.raises(openai.BadRequestError) as bad:
        chat.chat.completions.create(model="tuneloop", messages=USER, tools=[ORDER_STATUS, tool], tool_choice="required")
    assert bad.value.body["param"] == "tools.1.function.parameters.properties.amount.multipleOf"


def test_memory_never_answers_a_turn_that_must_call_a_tool(sqlite_tiny_app, admin_openai):
    """A verified answer would be text where the caller demanded a call (or JSON): such turns are decoded."""
    from test_memory_outcomes import RETURNS, approve

    approve(sqlite_tiny_app, RETURNS)
    question = [{"role": "user", "content": RETURNS[0]}]
    plain = admin_openai.chat.completions.create(model="tuneloop", messages=question, max_tokens=30)
    assert plain.memory_outcome == "verified" and plain.choices[0].message.content == RETURNS[1]
    called = admin_openai.chat.completions.create(model="tuneloop", messages=question, tools=[OPEN_TICKET],
                                                  tool_choice="required", parallel_tool_calls=False, max_tokens=80)
    assert called.memory_outcome is None and called.choices[0].message.tool_calls


# --- without a model: parsing auto calls, and what the upstream engine refuses ---------------------------
def test_auto_calls_are_parsed_and_checked_against_the_schema():
    from bot.tools import Tool, tool_use

    use = tool_use([Tool.model_validate(ORDER_STATUS), Tool.model_validate(OPEN_TICKET)], "auto", parallel=False)
    assert use.grammar() is None  # auto: the model may answer in text
    content, calls = use.parse('Let me look.\n<tool_call>\n{"name": "get_order_status", "arguments": '
                               '{"order_id": "A1234"}}\n</tool_call>\n<tool_call>{"name": "open_ticket", '
                               '"arguments": {"urgent": true, "topic": "delivery"}}</tool_call>')
    assert content == "Let me look." and [c.function.name for c in calls] == ["get_order_status"]  # not parallel
    assert json.loads(calls[0].function.arguments) == {"order_id": "A1234"}
    for wrong in ('{"name": "get_order_status", "arguments": {"order": "A1"}}',  # not in the schema
                  '{"name": "open_ticket", "arguments": {"urgent": "yes", "topic": "delivery"}}',  # not a boolean
                  '{"name": "delete_everything", "arguments": {}}', '{"name": '):
        text = f"<tool_call>{wrong}</tool_call>"
        assert use.parse(text) == (text, [])


def test_the_upstream_engine_refuses_by_name_what_it_does_not_relay(make_settings):
    from engine.protocol import SamplingParams
    from engine.upstream import UpstreamEngine
    from test_engine_contract import V0
    from tuneloop.core.errors import InvalidInputError

    engine = UpstreamEngine(make_settings(serving_backend="upstream", upstream_base_url="http://127.0.0.1:9/v1"))
    for params, param in [(SamplingParams(logprobs=2), "logprobs"),
                          (SamplingParams(grammar='root ::= "x"', grammar_param="tool_choice"), "tool_choice")]:
        with pytest.raises(InvalidInputError) as refused:
            engine.stream(V0, USER, params)
        assert refused.value.param == param
    engine.close()
