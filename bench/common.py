"""Shared by the benchmark scripts: start a tuneloop server on a free port, record results into
docs/benchmarks.md (one section per script, replaced on each run) and bench/results/*.json."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
OFFTOPIC = ROOT / "examples" / "acme_offtopic.txt"


def load_offtopic(path: Path = OFFTOPIC) -> list[str]:
    """Questions about the company that no fact of the knowledge base answers (default: the acme KB's):
    a verified reply to one is wrong, a handoff is right."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], *, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """Run `tuneloop serve` in its own process; return it and its base URL once /readyz answers 200."""
    port = free_port()
    full_env = {**os.environ, **env, "TUNELOOP_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "serve", "--port", str(port)],
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("tuneloop serve exited during startup")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError("server not ready in time")


def machine() -> dict:
    import torch
    import transformers

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_section(name: str, markdown: str, data: dict) -> None:
    """Replace this script's section of docs/benchmarks.md and save the raw figures as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEach section is written by `python bench/<name>.py`.\n"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(markdown)
