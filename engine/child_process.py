"""Running one of tuneloop's own modules in a child Python process.

Work that needs torch (de-quantising the bundled GGUF, merging an adapter into a GGUF) runs in a
child so that a process serving through llama.cpp never imports torch for it: the child returns its
memory when it exits. The child runs the same interpreter, with this checkout first on its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, args: list[str], *, capture: bool) -> subprocess.CompletedProcess:
    """``python -m module *args``; with ``capture`` its output is returned, else it goes to ours
    (progress a person should see)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, "PYTHONPATH": path},
                          capture_output=capture, text=True, check=False)


def last_line(result: subprocess.CompletedProcess) -> str:
    """Why a captured child failed: the last line it wrote to stderr."""
    return ((result.stderr or "").strip().splitlines() or [f"exit status {result.returncode}"])[-1]
