"""Who the client is, for the rate limit and the sign-in throttle: the connection's address, unless it
comes from one of ``trusted_proxies`` (uvicorn's forwarded-allow-ips, set by ``tuneloop serve``).

The probe's reproducer, on a real ``tuneloop serve`` over loopback (uvicorn alone trusts 127.0.0.1):
30 ratings with a different ``X-Forwarded-For`` each all got through an empty bucket, and 10 wrong
passwords with different values never reached 429."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from support.servers import listening_socket, wait_until


@pytest.fixture
def serve(tmp_path, tiny_model_dir):
    procs = []

    def start(**env_overrides: str) -> str:
        env = {**os.environ, "TUNELOOP_DATA_DIR": str(tmp_path / "data"), "TUNELOOP_BASE_MODEL": str(tiny_model_dir),
               "TUNELOOP_DTYPE": "float32", "TUNELOOP_DEVICE": "cpu", "TUNELOOP_ADMIN_PASSWORD": "admin-password",
               "TUNELOOP_RATE_LIMIT_BURST": "3", "TUNELOOP_RATE_LIMIT_PER_MINUTE": "1",
               "TUNELOOP_LOGIN_FREE_ATTEMPTS": "3", "OMP_NUM_THREADS": "1", **env_overrides}
        sock = listening_socket()
        log_path = tmp_path / "serve.log"
        proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli.main", "serve", "--fd", str(sock.fileno())],
                                env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, pass_fds=[sock.fileno()])
        proc.log_path = log_path
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()
        procs.append(proc)
        wait_until(lambda: _up(base), 180, what=f"{base}/healthz", processes=procs)
        return base

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _forged(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{i}"}


def _ratings(base: str) -> list[int]:
    return [httpx.post(f"{base}/v1/messages/msg_x/rating", json={"value": "up"}, headers=_forged(i)).status_code
            for i in range(8)]


def _wrong_passwords(base: str) -> list[int]:
    return [httpx.post(f"{base}/staff/login", data={"username": "admin", "password": f"wrong-{i}"},
                       headers=_forged(i)).status_code for i in range(6)]


def test_forwarded_for_is_ignored_unless_the_connection_is_a_trusted_proxy(serve):
    base = serve()  # trusted_proxies: none (the default)
    assert 429 in _ratings(base)  # one bucket: loopback's, whatever the header says
    assert 429 in _wrong_passwords(base)


def test_a_trusted_proxy_names_the_client(serve):
    base = serve(TUNELOOP_TRUSTED_PROXIES="127.0.0.1")
    assert 429 not in _ratings(base)  # eight clients behind the proxy, one request each
    assert 429 not in _wrong_passwords(base)
    same_client = [httpx.post(f"{base}/v1/messages/msg_x/rating", json={"value": "up"}, headers=_forged(99)).status_code
                   for _ in range(5)]
    assert 429 in same_client  # and each still has its own limit
