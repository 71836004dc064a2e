"""serving_backend=upstream with vLLM's runtime LoRA loading: a promotion has vLLM load the version's
adapter before anything is routed to it, a refusal keeps the old version serving (and says why),
every API process may load the same adapter, and a restarted vLLM gets it loaded again.

vLLM itself cannot run here (it needs a GPU), so the upstream is a small HTTP server in its own thread
that speaks vLLM's routes (``/v1/models``, ``/v1/load_lora_adapter``, streaming
``/v1/chat/completions``) and its error shapes; everything on tuneloop's side is real."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlmodel import Session, select

from bot.models import Message
from registry.models import ModelVersion, GateReport
from bot.runtime import ServingRuntime
from registry.versions import production_version
from registry import lifecycle as registry
from support.retrain import admin_key
from support.servers import closed_port, listening_socket, wait_until
from tuneloop.core.accounts.service import get_account
from tuneloop.core.db import session_scope

BASE = "tuneloop-base"


class FakeVllm:
    """vLLM's OpenAI-compatible server as far as tuneloop uses it, with what it was asked."""

    def __init__(self):
        self.loaded: dict[str, str] = {}  # lora_name -> lora_path
        self.load_requests: list[dict] = []
        self.chat_models: list[str] = []
        self.refuse: dict[str, str] = {}  # lora_name -> the error vLLM answers with
        self.app = FastAPI()
        self.app.get("/v1/models")(self.models)
        self.app.post("/v1/load_lora_adapter")(self.load_lora_adapter)
        self.app.post("/v1/chat/completions")(self.chat)

    def models(self):
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "vllm"}
                                           for name in [BASE, *self.loaded]]}

    async def load_lora_adapter(self, request: Request):
        body = await request.json()
        self.load_requests.append(body)
        name, path = body.get("lora_name"), body.get("lora_path")
        if name in self.refuse:
            return _error(400, self.refuse[name], "BadRequestError")
        if name in self.loaded:
            return _error(400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput")
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(404, f"No adapter found for {path}", "NotFoundError")
        self.loaded[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def chat(self, request: Request):
        body = await request.json()
        model = body["model"]
        if model != BASE and model not in self.loaded:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        self.chat_models.append(model)
        return StreamingResponse(_sse(model, f"answered by {model}"), media_type="text/event-stream")


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": status}},
                        status_code=status)


def _sse(model: str, text: str):
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
              {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}]
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


@pytest.fixture
def vllm():
    """The fake vLLM under uvicorn in a thread, on a socket the OS picked and that listens before the
    thread starts (connections wait in its backlog: no readiness polling needed)."""
    import uvicorn

    fake = FakeVllm()
    sock = listening_socket()
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    yield fake
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture
def settings(make_settings, tiny_model_dir, database_url, vllm, tmp_path):
    view = tmp_path / "vllm-view"  # the model store as the vLLM container mounts it
    settings = make_settings(
        base_model=str(tiny_model_dir), database_url=database_url, serving_backend="upstream",
        upstream_base_url=vllm.url, upstream_model=BASE, upstream_lora_loading=True,
        upstream_model_store_dir=str(view), memory_enabled=False, rate_limit_per_minute=0,
        version_poll_seconds=0.1)
    settings.model_store_dir.mkdir(parents=True)
    view.symlink_to(settings.model_store_dir)
    return settings


@pytest.fixture
def app(settings):
    from tuneloop.app import create_app

    app = create_app(settings, load_model=True, mount_ui=False)  # the runtime follows the pointer
    yield app
    app.state.db.dispose()


@pytest.fixture
def http(app):
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").json()["model_version"] == "v0", timeout=30)
        client.headers["Authorization"] = f"Bearer {admin_key(app.state.db)}"
        yield client


def add_candidate(app, number: int) -> ModelVersion:
    """A trained version as the worker registers it: adapter files in the store, gates passed."""
    settings = app.state.settings
    adapter = settings.model_store_dir / "adapters" / f"ftjob-{number}"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}))
    with session_scope(app.state.db) as session:
        version = registry.register_candidate(session, settings, job=None, parent=production_version(session),
                                              adapter_path=f"adapters/ftjob-{number}", snapshot_id=None, metrics={})
        report = GateReport(candidate_version_id=version.id, baseline_version_id="v0", passed=True)
        session.add(report)
        version.gate_report_id = report.id
    return version


def ask(http) -> str:
    client = OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
    reply = client.chat.completions.create(model="tuneloop", messages=[{"role": "user", "content": "Tent sizes?"}])
    return reply.choices[0].message.content


def served(http) -> tuple[str, str | None]:
    body = http.get("/readyz").json()
    return body["model_version"], body["swap_error"]


def test_promotion_loads_the_adapter_and_routes_chats_to_it(app, http, vllm, settings):
    assert ask(http) == f"answered by {BASE}" and vllm.load_requests == []  # v0 is the base model
    v1 = add_candidate(app, 1)
    response = http.post(f"/v1/registry/versions/{v1.id}/promote", json={})
    assert response.status_code == 200, response.text
    view_path = str(Path(settings.upstream_model_store_dir) / "adapters" / "ftjob-1")
    assert vllm.load_requests == [{"lora_name": "tuneloop-v1", "lora_path": view_path}]
    assert served(http) == ("v1", None)
    assert ask(http) == "answered by tuneloop-v1" and vllm.chat_models[-1] == "tuneloop-v1"
    with Session(app.state.db) as session:
        answers = session.exec(select(Message).where(Message.role == "assistant").order_by(Message.created_at)).all()
        assert [a.model_version_id for a in answers] == ["v0", "v1"]

    # Another API process follows the pointer: vLLM answers "already loaded", which is fine.
    other = ServingRuntime(settings, app.state.db)
    other.start(background=False)
    assert other.production_id == "v1" and other.swap_error is None
    assert vllm.load_requests[-1]["lora_name"] == "tuneloop-v1" and len(vllm.loaded) == 1

    # vLLM restarted and forgot its adapters: the next chat loads it again and is answered.
    vllm.loaded.clear()
    assert ask(http) == "answered by tuneloop-v1" and list(vllm.loaded) == ["tuneloop-v1"]

    # Rolling back to the base version needs no adapter.
    loads = len(vllm.load_requests)
    assert http.post("/v1/registry/rollback", json={"version_id": "v0"}).status_code == 200
    assert served(http) == ("v0", None) and ask(http) == f"answered by {BASE}"
    assert len(vllm.load_requests) == loads


def test_a_refused_adapter_keeps_the_old_version_serving(app, http, vllm):
    v1 = add_candidate(app, 1)
    assert http.post(f"/v1/registry/versions/{v1.id}/promote", json={}).status_code == 200
    v2 = add_candidate(app, 2)
    vllm.refuse["tuneloop-v2"] = "LoRA rank 128 is greater than max_lora_rank 64."

    # Through the API: the promotion is refused with vLLM's reason, production does not move.
    response = http.post(f"/v1/registry/versions/{v2.id}/promote", json={})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "adapter_not_loaded" and "Production is unchanged" in error["message"]
    assert "HTTP 400: LoRA rank 128 is greater than max_lora_rank 64." in error["message"]
    with Session(app.state.db) as session:
        assert production_version(session).id == "v1" and session.get(ModelVersion, "v2").status == "candidate"
    assert ask(http) == "answered by tuneloop-v1"

    # Moved by another process (`tuneloop models promote`): this one keeps serving v1 and says why.
    with session_scope(app.state.db) as session:
        registry.promote(session, app.state.settings, "v2", get_account(session, "admin"))
    model_version, swap_error = wait_until(lambda: (s := served(http))[1] and s, timeout=30)
    assert model_version == "v1" and "max_lora_rank 64" in swap_error
    assert ask(http) == "answered by tuneloop-v1" and "tuneloop-v2" not in vllm.loaded

    # Once vLLM accepts the adapter, the runtime's next poll switches.
    del vllm.refuse["tuneloop-v2"]
    wait_until(lambda: served(http) == ("v2", None), timeout=30)
    assert ask(http) == "answered by tuneloop-v2"


def test_load_errors_name_the_cause(app, vllm, settings):
    from engine.upstream import UpstreamAdapterError, UpstreamEngine

    v1 = add_candidate(app, 1)
    elsewhere = UpstreamEngine(settings.model_copy(update={"upstream_model_store_dir": "/elsewhere"}))
    with pytest.raises(UpstreamAdapterError, match="HTTP 404: No adapter found for /elsewhere/adapters/ftjob-1"):
        elsewhere.model_for(v1)
    port = closed_port()
    gone = UpstreamEngine(settings.model_copy(update={"upstream_base_url": f"http://127.0.0.1:{port}/v1"}))
    with pytest.raises(UpstreamAdapterError, match=f"Could not reach http://127.0.0.1:{port}/v1/load_lora_adapter"):
        gone.model_for(v1)
    assert vllm.loaded == {}
    plain = UpstreamEngine(settings.model_copy(update={"upstream_lora_loading": False}))
    assert plain.model_for(v1) == BASE and vllm.load_requests[-1]["lora_path"].startswith("/elsewhere")
