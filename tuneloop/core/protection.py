"""Protection of the public routes: a per-client token-bucket rate limit and a maximum body size.

Both are pure ASGI middleware, so streaming answers pass through untouched. Rejections use OpenAI's
error envelope: 429 ``rate_limit_error`` with ``Retry-After``, 413 ``request_too_large``.

The buckets live in each process's memory: with ``serve --workers N`` a client may get up to N times
the configured rate in the worst case. A client is its account when it sends a valid API key, otherwise
its IP address, whatever bearer string it sends (a random one per request must not buy a fresh bucket).
The address is the connection's own unless it comes from one of ``trusted_proxies``, whose
X-Forwarded-For uvicorn then reads (``tuneloop.cli.server.proxy_options``; docs/deploy.md).

Sign-in forms (``/staff/login``, ``/admin/login``) are throttled per address with exponential backoff
after a few wrong passwords (``LoginThrottle``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from fnmatch import fnmatchcase

from fastapi import FastAPI

from tuneloop.core.accounts.service import account_for_key
from tuneloop.core.errors import ApiError, error_body, send_error
from tuneloop.core.inputs import SurrogateGuard
from tuneloop.core.settings import Settings


class TokenBucketLimiter:
    """``burst`` requests at once, refilled at ``rate_per_second``; remembers the ``max_clients`` most recent."""

    def __init__(self, rate_per_second: float, burst: int, *, max_clients: int = 50_000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_clients, self.clock = rate_per_second, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """Spend one token. Returns 0 when allowed, else the seconds until a token is available."""
        now = self.clock()
        with self._lock:
            tokens, updated = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if not wait:
                tokens -= 1
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


class RequestTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than the {limit}-byte limit of this server; send a "
                              "shorter conversation or a smaller file.", type="request_too_large",
                         code="request_too_large")


def client_address(scope) -> str:
    return "ip:" + (scope.get("client") or ("unknown",))[0]


def bearer_key(scope) -> str:
    auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def account_identity(scope, key: str) -> str | None:
    """``account:<id>`` for a valid API key, None for an unknown or revoked one (runs a DB query)."""
    from sqlmodel import Session


    app = scope.get("app")
    db = getattr(getattr(app, "state", None), "db", None)
    if db is None:
        return None
    with Session(db) as session:
        account = account_for_key(session, key)
    return f"account:{account.id}" if account is not None else None


async def client_identity(scope) -> str:
    """The rate-limit bucket: the account behind a valid key, else the client's address."""
    import anyio

    key = bearer_key(scope)
    if key:
        account = await anyio.to_thread.run_sync(account_identity, scope, key)
        if account is not None:
            return account
    return client_address(scope)


class LoginThrottle:
    """Per client address: ``free`` wrong passwords, then each further attempt waits twice as long as
    the one before (1 s, 2 s, 4 s … up to ``max_delay``); a successful sign-in resets the count."""

    def __init__(self, free: int = 5, max_delay: float = 300.0, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 50_000):
        self.free, self.max_delay, self.clock, self.max_clients = free, max_delay, clock, max_clients
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # client -> (count, blocked until)
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        with self._lock:
            _count, until = self._failures.get(client, (0, 0.0))
            return max(0.0, until - self.clock())

    def record(self, client: str, success: bool) -> None:
        with self._lock:
            if success:
                self._failures.pop(client, None)
                return
            count = self._failures.pop(client, (0, 0.0))[0] + 1
            delay = 0.0 if count < self.free else min(self.max_delay, 2.0 ** (count - self.free))
            self._failures[client] = (count, self.clock() + delay)
            if len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


class ProtectionMiddleware:
    def __init__(self, app, settings: Settings, limiter: TokenBucketLimiter | None = None,
                 login_throttle: LoginThrottle | None = None):
        self.app, self.settings = app, settings
        self.limiter = limiter or (
            TokenBucketLimiter(settings.rate_limit_per_minute / 60.0, settings.rate_limit_burst)
            if settings.rate_limit_per_minute > 0 else None
        )
        self.logins = login_throttle or LoginThrottle(settings.login_free_attempts, settings.login_max_delay_seconds)

    def _rate_limited(self, scope) -> bool:
        return self.limiter is not None and scope["method"] == "POST" and any(
            fnmatchcase(scope["path"], pattern) for pattern in self.settings.rate_limit_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] in LOGIN_PATHS:
            client = client_address(scope)
            wait = self.logins.wait(client)
            if wait:
                retry = max(1, math.ceil(wait))
                return await send_error(send, 429, error_body(
                    f"Too many wrong passwords from this address; try again in {retry} s.", "rate_limit_error",
                    code="login_throttled"), [(b"retry-after", str(retry).encode())])
            self.logins.record(client, success=False)  # counted before it runs: parallel guesses wait too
            send = self._recording_login(client, send)
        if self._rate_limited(scope):
            wait = self.limiter.take(await client_identity(scope))
            if wait:
                retry = max(1, math.ceil(wait))
                return await send_error(send, 429, error_body(
                    f"Too many requests from this client: the limit is {self.settings.rate_limit_per_minute:g} per "
                    f"minute (bursts of {self.settings.rate_limit_burst}). Retry after {retry} s.",
                    "rate_limit_error", code="rate_limit_exceeded"), [(b"retry-after", str(retry).encode())])

        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.settings.max_upload_bytes if multipart else self.settings.max_request_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await send_error(send, 413, _too_large_body(limit))

        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # chunked bodies that declared no length
                    raise RequestTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge:
            if started:
                raise
            await send_error(send, 413, _too_large_body(limit))

    def _recording_login(self, client: str, send):
        async def recording_send(message):
            if message["type"] == "http.response.start" and message["status"] < 400:
                self.logins.record(client, success=True)
            await send(message)

        return recording_send


LOGIN_PATHS = ("/staff/login", "/admin/login")


def _too_large_body(limit: int) -> dict:
    exc = RequestTooLarge(limit)
    return error_body(str(exc.detail), exc.type, code=exc.code)


def install_protection(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(SurrogateGuard)  # inside the size limit, so the body it reads is bounded
    app.add_middleware(ProtectionMiddleware, settings=settings)
