"""Production shape: two `tuneloop serve` processes on one PostgreSQL database and one data directory.
A promotion done through the registry is picked up by both within seconds, with no restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from conftest import _create_pg_database, _drop_pg_database
from support.servers import listening_socket, wait_ready, wait_until
from tuneloop.core import db

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def make_adapter(base_dir: Path, target: Path) -> None:
    """A LoRA adapter for the tiny model, saved the way the trainer saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(target)


@pytest.fixture
def pg_url():
    name, url = _create_pg_database()
    yield url
    _drop_pg_database(name)


@pytest.fixture
def servers(tmp_path, tiny_model_dir, pg_url):
    env = {
        **os.environ, "TUNELOOP_DATABASE_URL": pg_url, "TUNELOOP_DATA_DIR": str(tmp_path / "data"),
        "TUNELOOP_BASE_MODEL": str(tiny_model_dir), "TUNELOOP_DTYPE": "float32", "TUNELOOP_DEVICE": "cpu",
        "TUNELOOP_ADMIN_PASSWORD": "admin-password", "TUNELOOP_VERSION_POLL_SECONDS": "0.5",
        "TUNELOOP_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1",
    }
    procs = []
    try:
        # One after the other: two processes doing their first start on a blank database at the same
        # moment race in prepare_database (both create alembic_version); reported to the lead.
        for _ in range(2):
            sock = listening_socket()
            port = sock.getsockname()[1]
            log_path = tmp_path / f"serve-{port}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "tuneloop.cli.main", "serve", "--fd", str(sock.fileno())],
                env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, pass_fds=[sock.fileno()],
            )
            sock.close()
            proc.port, proc.log_path = port, log_path
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{proc.port}", timeout=180, processes=procs)
        yield procs, env
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def served_version(port: int) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    answer = client.chat.completions.create(model="tuneloop", max_tokens=2,
                                            messages=[{"role": "user", "content": "hello"}])
    return answer.system_fingerprint.removeprefix("fp_tuneloop_")


def test_both_processes_follow_a_promotion(servers, tmp_path, tiny_model_dir, pg_url):
    from registry.models import ModelVersion, VersionStatus
    from registry import lifecycle as registry
    from registry.models import GateReport
    from tuneloop.core.accounts.models import Account
    from tuneloop.core.settings import Settings

    procs, _env = servers
    assert [served_version(p.port) for p in procs] == ["v0", "v0"]

    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, base_model=str(tiny_model_dir))
    make_adapter(tiny_model_dir, settings.model_store_dir / "adapters" / "v1")
    engine = db.make_engine(pg_url)
    with db.session_scope(engine) as session:
        report = GateReport(candidate_version_id="v1", baseline_version_id="v0", passed=True)
        session.add(report)
        session.add(ModelVersion(id="v1", number=1, name="tuneloop-v1-ops", base_model=str(tiny_model_dir),
                                 adapter_path="adapters/v1", parent_id="v0", status=VersionStatus.candidate,
                                 gate_report_id=report.id))
        session.flush()
        admin = session.exec(select(Account).where(Account.username == "admin")).one()
        registry.promote(session, settings, "v1", admin)
    promoted_at = time.monotonic()

    def both_serve_v1() -> bool:
        return all(
            'tuneloop_serving_version{version_id="v1"} 1.0' in httpx.get(f"http://127.0.0.1:{p.port}/metrics").text
            for p in procs)

    wait_until(both_serve_v1, timeout=30, what="both processes to serve v1", processes=procs)
    assert time.monotonic() - promoted_at < 30
    assert [served_version(p.port) for p in procs] == ["v1", "v1"]
    engine.dispose()
