"""Shared fixtures: settings on a temporary data directory, both database engines, a tiny real
model built from a config (fast tests) and the real SmolLM2 converted once per machine (slow tests)."""

from __future__ import annotations

import io
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

import tuneloop  # noqa: F401  (offline environment before transformers is imported)

# Servers and workers the tests start in other processes serve with transformers, as the in-process
# apps do (``make_settings``); the llama.cpp engine, the default for users, has tests of its own.
os.environ.setdefault("TUNELOOP_ENGINE", "transformers")

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TUNELOOP_TEST_CACHE", REPO / ".tuneloop-test-cache"))
PG_ADMIN_URL = os.environ.get("TUNELOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The bundled SmolLM2, converted from its GGUF once and cached across test runs."""
    from engine.modelstore import BUNDLED_DIR_NAME, bundled_gguf_path, convert_gguf

    target = CACHE / BUNDLED_DIR_NAME
    if not (target / "model.safetensors").is_file():
        convert_gguf(bundled_gguf_path(), target, show_progress=False)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A 2-layer Llama with random weights and SmolLM2's real tokenizer and chat template."""
    target = CACHE / "tiny-llama"
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.modelstore import bundled_gguf_path

    gguf = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model(LlamaForCausalLM(config), tokenizer, target)


def save_model(model, tokenizer, target: Path) -> Path:
    """Save a test model and its tokenizer at ``target`` in the cache, atomically: an interrupted run
    never leaves a half-written model for the next one."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


# --- databases ---------------------------------------------------------------------------------
def _create_pg_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database. No server answering skips the test on a developer's machine,
    and fails it under CI (``CI=true``), where PostgreSQL is part of the contract."""
    import psycopg

    name = f"tl_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = (f"no PostgreSQL answers at {PG_ADMIN_URL} ({str(exc).strip().splitlines()[0]}); start one "
                  "(trust auth, database `test`) or set TUNELOOP_TEST_PG")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " — CI requires it", pytrace=False)
        pytest.skip(reason)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database on each engine: tests using it run once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuneloop.db'}"
        return
    name, url = _create_pg_database()
    yield url
    _drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tuneloop.db'}"


# --- settings and apps -------------------------------------------------------------------------
@pytest.fixture
def make_settings(tmp_path):
    from tuneloop.core.settings import Settings

    def _make(**overrides):
        values = dict(
            data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'tuneloop.db'}",
            dtype="float32", admin_password="admin-password", version_poll_seconds=0.2,
            # The demo company, as `tuneloop demo` sets it up (the product's defaults name no company).
            company_name="Acme Outdoor Gear", company_hotline="1-800-555-0142",
            company_email_domain="acmeoutdoor.example",
            serving_backend="transformers",  # the llama.cpp engine has its own tests (test_engine_llamacpp.py)
        )
        values.update(overrides)
        return Settings(**values)

    return _make


@pytest.fixture
def tiny_settings(make_settings, tiny_model_dir, database_url):
    """Settings serving the tiny model, on each database engine."""
    return make_settings(base_model=str(tiny_model_dir), database_url=database_url)


@pytest.fixture
def tiny_app(tiny_settings):
    """The whole app (without the UI) serving the tiny model, model loaded before the test starts."""
    from tuneloop.app import create_app

    app = create_app(tiny_settings, load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    yield app
    app.state.runtime.stop()
    app.state.db.dispose()


@pytest.fixture
def sqlite_tiny_app(make_settings, tiny_model_dir):
    """``tiny_app`` on SQLite alone, for tests that train (running them on both engines doubles their
    time and tests the database no further)."""
    from tuneloop.app import create_app

    app = create_app(make_settings(base_model=str(tiny_model_dir)), load_model=False, mount_ui=False)
    app.state.runtime.start(background=False)
    yield app
    app.state.runtime.stop()
    app.state.db.dispose()


@pytest.fixture
def admin_openai(sqlite_tiny_app):
    """The official openai client on ``sqlite_tiny_app`` with an admin's API key."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from support.retrain import admin_key

    with TestClient(sqlite_tiny_app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key=admin_key(sqlite_tiny_app.state.db), http_client=http,
                     max_retries=0)


@pytest.fixture
def client(tiny_app):
    from fastapi.testclient import TestClient

    with TestClient(tiny_app) as test_client:
        yield test_client


@pytest.fixture
def openai_client(client):
    """The official openai client, talking to the in-process app over the TestClient's transport."""
    from openai import OpenAI

    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


@pytest.fixture
def cli_runner(monkeypatch, capsys):
    """``cli_runner(env, unset=())`` configures TUNELOOP_* variables (names without the prefix) and
    returns ``run(*args, stdin="")``: the real CLI entry point in-process -> (exit code, stdout, stderr)."""
    from tuneloop.cli import main as cli
    from tuneloop.core.settings import get_settings

    def configure(env: dict, unset: tuple[str, ...] = ()):
        for name, value in env.items():
            monkeypatch.setenv(f"TUNELOOP_{name}", str(value))
        for name in unset:
            monkeypatch.delenv(f"TUNELOOP_{name}", raising=False)
        get_settings.cache_clear()

        def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
            monkeypatch.setattr(sys, "argv", ["tuneloop", *args])
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
            out, err = capsys.readouterr()
            return code, out, err

        return run

    yield configure
    get_settings.cache_clear()
