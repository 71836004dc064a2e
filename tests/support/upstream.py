"""An OpenAI-compatible upstream for the upstream engine's tests: tuneloop itself serving the tiny
model in another process, on a socket handed over already listening."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from support.servers import listening_socket, wait_ready

SERVER = """
import os, uvicorn
from tuneloop.app import create_app
from tuneloop.core.settings import Settings
uvicorn.run(create_app(Settings(), mount_ui=False), fd=int(os.environ["SERVER_FD"]), log_level="warning")
"""


def serve_tiny_model(model_dir: Path, data_dir: Path) -> Iterator[str]:
    """Yield the ``/v1`` base URL of a tuneloop serving ``model_dir``; stop it afterwards."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    env = {**os.environ, "SERVER_FD": str(sock.fileno()), "TUNELOOP_DATA_DIR": str(data_dir),
           "TUNELOOP_DATABASE_URL": f"sqlite:///{data_dir / 'up.db'}", "TUNELOOP_BASE_MODEL": str(model_dir),
           "TUNELOOP_DTYPE": "float32", "TUNELOOP_ADMIN_PASSWORD": "x" * 12, "TUNELOOP_RATE_LIMIT_PER_MINUTE": "0",
           "TUNELOOP_REPETITION_GUARD_NGRAM": "0"}  # a plain model server: the client decides
    process = subprocess.Popen([sys.executable, "-c", SERVER], env=env, pass_fds=[sock.fileno()])
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=120, processes=[process])
        yield f"{base}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)
