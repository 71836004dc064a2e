"""Servers under test: a socket that already listens is handed to the server (no free-port race),
and one bounded wait for readiness that fails early, with the log, when the server died."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx


def listening_socket() -> socket.socket:
    """A loopback socket on a port the OS picked, already listening: pass its ``fileno()`` to the
    server (``pass_fds``; uvicorn ``fd=`` or ``tuneloop serve --fd``) and close it here afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def closed_port() -> int:
    """A port nothing listens on (for tests of 'cannot connect' errors)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=5, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float = 120.0, *, what: str = "the condition",
               processes: Sequence[subprocess.Popen] = (), interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true (returned). Fails early if one of
    ``processes`` exited (with the tail of its ``log_path`` if it has one) and, at the deadline,
    with the last value seen."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                log_path = getattr(process, "log_path", None)
                tail = Path(log_path).read_text()[-4000:] if log_path else ""
                raise AssertionError(f"a server exited ({process.returncode}) while waiting for {what}:\n{tail}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")


def wait_ready(base_url: str, timeout: float = 120.0, *, processes: Sequence[subprocess.Popen] = ()) -> None:
    """Wait until ``base_url``/readyz answers 200 (model loaded, database reachable)."""
    wait_until(lambda: http_ok(f"{base_url.rstrip('/')}/readyz"), timeout, what=f"{base_url}/readyz",
               processes=processes)
