"""Observability and protection of the HTTP API: request ids, JSON logs, Prometheus metrics (per
process and from the database), rate limits and body size limits, and streams that still stream."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi import Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tuneloop.core.accounts import service as accounts
from tuneloop.core.db import session_scope


def make_app(settings):
    from tuneloop.app import create_app

    app = create_app(settings, load_model=False, mount_ui=False)

    @app.post("/test/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    @app.get("/test/stream")
    def stream():
        return StreamingResponse((f"chunk {i}\n" for i in range(5)), media_type="text/plain")

    return app


@pytest.fixture
def ops_client(make_settings):
    def _client(**overrides):
        app = make_app(make_settings(**overrides))
        return TestClient(app)

    return _client


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_request_ids_are_echoed_or_made_and_logged_as_json(ops_client, caplog):
    from tuneloop.ops.observability import JsonFormatter

    client = ops_client(log_format="json")
    caplog.set_level(logging.INFO, logger="tuneloop.access")
    mine = client.get("/metrics", headers={"X-Request-ID": "req-abc.123"})
    assert mine.headers["x-request-id"] == "req-abc.123"
    made = client.get("/metrics", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["x-request-id"] != "bad id with spaces" and len(made.headers["x-request-id"]) == 16

    access = [r for r in caplog.records if r.name == "tuneloop.access"]
    line = json.loads(JsonFormatter().format(access[0]))
    assert line["request_id"] == "req-abc.123"
    assert (line["method"], line["route"], line["status"], line["level"]) == ("GET", "/metrics", 200, "info")
    assert line["duration_ms"] >= 0 and line["ts"].endswith("Z")


def test_metrics_count_requests_by_route_template_and_generation_hooks(ops_client):
    from tuneloop.core.metrics import observe_generation, track_stream

    client = ops_client()
    before = scrape(client)
    client.post("/v1/messages/msg_doesnotexist/rating", json={"value": 1})
    client.get("/no/such/page/42")
    observe_generation("v0", 7, ttft_seconds=0.3)
    with track_stream():
        during = scrape(client)
    after = scrape(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    rating_key = [k for k in after if k[0] == "tuneloop_http_requests_total"
                  and dict(k[1])["route"] == "/v1/messages/{message_id}/rating"]
    assert rating_key, "the rating request is counted under its route template, not its path"
    assert delta("tuneloop_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("tuneloop_generated_tokens_total", version_id="v0") == 7
    assert delta("tuneloop_time_to_first_token_seconds_count", version_id="v0") == 1
    assert during[("tuneloop_active_streams", ())] == after[("tuneloop_active_streams", ())] + 1
    assert after[("tuneloop_model_ready", ())] == 0  # this app never loaded its model


def test_metrics_from_the_database(make_settings, database_url):
    from bot.models import Conversation, Message
    from feedback.corrections.models import Correction, CorrectionStatus
    from feedback.ratings.models import Rating
    from registry.models import GateReport
    from tuneloop.core import db

    app = make_app(make_settings(database_url=database_url))
    with db.session_scope(app.state.db) as session:
        conv = Conversation()
        session.add(conv)
        session.flush()
        answers = [Message(conversation_id=conv.id, position=i, role="assistant", content="a", model_version_id="v0")
                   for i in range(3)]
        session.add_all(answers)
        session.flush()
        session.add_all([Rating(message_id=answers[0].id, value=-1, model_version_id="v0"),
                         Rating(message_id=answers[1].id, value=-1, model_version_id="v0"),
                         Rating(message_id=answers[2].id, value=1, model_version_id="v0")])
        session.add(Correction(lineage_id="c1", question="q", answer="a", author="ann",
                               status=CorrectionStatus.submitted))
        session.add_all([GateReport(candidate_version_id="v1", baseline_version_id="v0", passed=True),
                         GateReport(candidate_version_id="v2", baseline_version_id="v0", passed=False),
                         GateReport(candidate_version_id="v3", baseline_version_id="v0", passed=True)])
    with TestClient(app) as client:
        metrics = scrape(client)
    assert metrics[("tuneloop_ratings", (("value", "down"), ("version_id", "v0")))] == 2
    assert metrics[("tuneloop_ratings", (("value", "up"), ("version_id", "v0")))] == 1
    assert metrics[("tuneloop_review_backlog", (("kind", "rated_down_unreviewed"),))] == 2
    assert metrics[("tuneloop_review_backlog", (("kind", "corrections_awaiting_approval"),))] == 1
    assert metrics[("tuneloop_gate_pass_ratio", ())] == pytest.approx(2 / 3)
    assert metrics[("tuneloop_production_revision", (("version_id", "v0"),))] == 1
    assert metrics[("tuneloop_database_up", ())] == 1
    app.state.db.dispose()


def test_rate_limit_per_client_answers_429_with_retry_after(ops_client):
    client = ops_client(rate_limit_per_minute=6, rate_limit_burst=2)
    path = "/v1/messages/msg_x/rating"
    statuses = [client.post(path, json={"value": 1}).status_code for _ in range(2)]
    assert 429 not in statuses
    limited = client.post(path, json={"value": 1})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"  # one token every 10 s at 6/minute
    error = limited.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "6 per minute" in error["message"]
    # A made-up bearer string is still this address's bucket (it must not buy a fresh one)...
    made_up = client.post(path, json={"value": 1}, headers={"Authorization": "Bearer someone-else"})
    assert made_up.status_code == 429
    # ...a valid API key is its account's own bucket; reads are never limited.
    with session_scope(client.app.state.db) as session:
        key = accounts.create_api_key(session, accounts.get_account(session, "admin"))[1]
    other = client.post(path, json={"value": 1}, headers={"Authorization": f"Bearer {key}"})
    assert other.status_code != 429
    assert client.get("/metrics").status_code == 200


def test_token_bucket_refills_at_the_configured_rate():
    from tuneloop.core.protection import TokenBucketLimiter

    now = [0.0]
    limiter = TokenBucketLimiter(rate_per_second=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0 and limiter.take("b") == 0


def test_body_size_limit_with_and_without_content_length(ops_client):
    client = ops_client(max_request_bytes=1024)
    assert client.post("/test/echo", content=b"x" * 1000).json() == {"bytes": 1000}
    declared = client.post("/test/echo", content=b"x" * 5000)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "request_too_large" and "1024-byte" in declared.json()["error"]["message"]
    chunked = client.post("/test/echo", content=(b"x" * 600 for _ in range(3)))  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"


def test_streaming_responses_pass_through_the_middleware(ops_client):
    client = ops_client(max_request_bytes=1024, rate_limit_per_minute=1, rate_limit_burst=1)
    with client.stream("GET", "/test/stream") as response:
        chunks = [line for line in response.iter_lines() if line]
        assert response.headers["x-request-id"]
    assert chunks == [f"chunk {i}" for i in range(5)]
