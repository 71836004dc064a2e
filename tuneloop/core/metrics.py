"""Per-process Prometheus metrics that serving records on its hot path: tokens generated, time to
first token, active streams. (HTTP and database metrics, and the /metrics route, are in
``tuneloop.ops.observability``; it scrapes these from the same registry.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

TOKENS_GENERATED = Counter("tuneloop_generated_tokens", "Completion tokens generated.", ["version_id"])
TIME_TO_FIRST_TOKEN = Histogram(
    "tuneloop_time_to_first_token_seconds", "Time from request to the first generated token.", ["version_id"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
ACTIVE_STREAMS = Gauge("tuneloop_active_streams", "Streaming answers in progress.", multiprocess_mode="livesum")


def observe_generation(version_id: str, tokens: int, ttft_seconds: float | None = None) -> None:
    """Call once per finished answer (streamed or not): completion tokens, and the time to its first token."""
    TOKENS_GENERATED.labels(version_id).inc(max(tokens, 0))
    if ttft_seconds is not None:
        TIME_TO_FIRST_TOKEN.labels(version_id).observe(ttft_seconds)


def stream_started() -> None:
    ACTIVE_STREAMS.inc()


def stream_ended() -> None:
    ACTIVE_STREAMS.dec()


@contextmanager
def track_stream() -> Iterator[None]:
    """``with track_stream(): ...`` around a streaming response's generator: counted while it runs."""
    stream_started()
    try:
        yield
    finally:
        stream_ended()
