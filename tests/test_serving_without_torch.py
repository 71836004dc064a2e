"""A process serving through llama.cpp (the default on a CPU) never imports torch or transformers:
they are ~370 MB of a server's memory and only training, the gates and the transformers engine need
them. Checked in a fresh interpreter (this one has torch loaded by other tests): the whole app is
built, answers a chat through the official openai client, and embeds with correction memory's
encoder; then the interpreter's modules are listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys
from fastapi.testclient import TestClient
from openai import OpenAI
sys.path.insert(0, {tests!r})
from support.retrain import admin_key
from engine.embeddings import embed
from tuneloop.app import create_app
from tuneloop.core.settings import Settings

settings = Settings(data_dir={data!r}, database_url={db!r}, base_model={model!r}, serving_backend="llamacpp",
                    admin_password="admin-password", version_poll_seconds=0.2)
app = create_app(settings, load_model=False, mount_ui=False)
app.state.runtime.start(background=False)
with TestClient(app) as http:
    client = OpenAI(base_url="http://testserver/v1", api_key=admin_key(app.state.db), http_client=http,
                    max_retries=0)
    reply = client.chat.completions.create(model="tuneloop", max_tokens=6,
                                           messages=[{{"role": "user", "content": "Where is my order?"}}])
    vectors = embed(["Where is my order?", "How long do returns take?"])
app.state.runtime.stop()
print(json.dumps({{"tokens": reply.usage.completion_tokens, "served_by": reply.model,
                  "dimensions": vectors.shape[1],
                  "heavy": sorted(m for m in ("torch", "transformers", "peft", "sentence_transformers")
                                  if m in sys.modules)}}))
"""


def test_a_llamacpp_server_answers_without_importing_torch(tiny_model_dir, tmp_path):
    script = SCRIPT.format(tests=str(Path(__file__).parent), data=str(tmp_path / "data"),
                           db=f"sqlite:///{tmp_path / 'tuneloop.db'}", model=str(tiny_model_dir))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokens"] >= 1 and result["dimensions"] == 384
    assert result["heavy"] == [], f"the serving process imported {result['heavy']}"
