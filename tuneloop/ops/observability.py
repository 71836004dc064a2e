"""Operations view of a running tuneloop: Prometheus metrics at ``/metrics`` and JSON logs that carry
the request id of the request they were written for.

Two kinds of metrics:

* **Per process** (counters, histograms, one gauge): HTTP requests and latency by route template,
  tokens generated, time to first token, active streams. Hot paths call the small functions of
  ``tuneloop.core.metrics`` (``observe_generation``, ``stream_started``/``stream_ended``, ``track_stream``). With
  ``serve --workers N`` each worker counts its own; set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
  directory shared by the workers to have ``/metrics`` aggregate them (prometheus_client's
  multiprocess mode), or scrape each process.
* **From the database at scrape time** (gauges): ratings by model version, review backlog, fine-tune
  jobs by outcome and their durations, gate reports passed/failed, the production pointer. Every
  process reports the same numbers, so they are correct however many processes there are.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import secrets
import sys
import time

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from tuneloop.core.settings import Settings

log = logging.getLogger("tuneloop.access")

# --- per-process metrics ---------------------------------------------------------------------------
HTTP_REQUESTS = Counter("tuneloop_http_requests", "HTTP requests answered.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "tuneloop_http_request_duration_seconds", "Time from request to the last byte of the response (streams included).",
    ["method", "route"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# --- metrics computed from the database at scrape time -------------------------------------------
class DatabaseCollector:
    """Gauges read from the database on every scrape (a handful of GROUP BY queries)."""

    def __init__(self, db, runtime=None):
        self.db, self.runtime = db, runtime

    def collect(self):
        yield from self._serving()
        try:
            yield from self._from_database()
        except Exception:  # a scrape must still answer when the database is briefly away
            logging.getLogger(__name__).exception("reading metrics from the database failed")
            up = GaugeMetricFamily("tuneloop_database_up", "1 if the last scrape could read the database.")
            up.add_metric([], 0)
            yield up

    def _serving(self):
        ready = GaugeMetricFamily("tuneloop_model_ready", "1 once this process has loaded its production model.")
        serving = GaugeMetricFamily("tuneloop_serving_version", "The version this process serves (value 1).",
                                    labels=["version_id"])
        version_id = getattr(self.runtime, "production_id", None)
        ready.add_metric([], 1 if version_id else 0)
        if version_id:
            serving.add_metric([version_id], 1)
        yield ready
        yield serving

    def _from_database(self):
        from sqlalchemy import func, select
        from sqlmodel import Session

        from bot.models import Message
        from registry.models import ProductionPointer
        from feedback.corrections.models import Correction, CorrectionStatus
        from feedback.ratings.models import Rating
        from feedback.decisions import ReviewDecision, ReviewStatus
        from registry.models import GateReport
        from retrain.models import FineTuneJob

        with Session(self.db) as session:
            ratings = GaugeMetricFamily("tuneloop_ratings", "Thumbs up/down by the model version rated.",
                                        labels=["version_id", "value"])
            for version_id, value, n in session.exec(
                select(Rating.model_version_id, Rating.value, func.count()).group_by(Rating.model_version_id, Rating.value)
            ):
                ratings.add_metric([version_id or "unknown", "up" if value > 0 else "down"], n)
            yield ratings

            backlog = GaugeMetricFamily("tuneloop_review_backlog", "Work waiting for reviewers.", labels=["kind"])
            rated_down = session.exec(
                select(func.count(func.distinct(Rating.message_id)))
                .join(ReviewDecision, ReviewDecision.message_id == Rating.message_id, isouter=True)
                .where(Rating.value < 0)
                .where((ReviewDecision.message_id == None) | (ReviewDecision.status == ReviewStatus.open))  # noqa: E711
            ).one()[0]
            submitted = session.exec(
                select(func.count()).select_from(Correction).where(Correction.status == CorrectionStatus.submitted)
            ).one()[0]
            backlog.add_metric(["rated_down_unreviewed"], rated_down)
            backlog.add_metric(["corrections_awaiting_approval"], submitted)
            yield backlog

            jobs = SummaryMetricFamily("tuneloop_finetune_job_duration_seconds",
                                       "Finished fine-tune jobs by outcome: count and total run time.",
                                       labels=["backend", "status"])
            by_status = GaugeMetricFamily("tuneloop_finetune_jobs", "Fine-tune jobs by status.", labels=["status"])
            for status, n in session.exec(select(FineTuneJob.status, func.count()).group_by(FineTuneJob.status)):
                by_status.add_metric([str(status)], n)
            durations: dict[tuple[str, str], list[float]] = {}
            for backend, status, started, finished in session.exec(
                select(FineTuneJob.backend, FineTuneJob.status, FineTuneJob.started_at, FineTuneJob.finished_at)
                .where(FineTuneJob.finished_at != None, FineTuneJob.started_at != None)  # noqa: E711
            ):
                durations.setdefault((backend, str(status)), []).append((finished - started).total_seconds())
            for (backend, status), values in sorted(durations.items()):
                jobs.add_metric([backend, status], len(values), sum(values))
            yield by_status
            yield jobs

            gates = GaugeMetricFamily("tuneloop_gate_reports", "Gate reports by result.", labels=["result"])
            counts = dict(session.exec(select(GateReport.passed, func.count()).group_by(GateReport.passed)).all())
            passed, failed = counts.get(True, 0), counts.get(False, 0)
            gates.add_metric(["passed"], passed)
            gates.add_metric(["failed"], failed)
            yield gates
            rate = GaugeMetricFamily("tuneloop_gate_pass_ratio", "Share of gate reports that passed (0 when none).")
            rate.add_metric([], passed / (passed + failed) if passed + failed else 0.0)
            yield rate

            pointer = session.get(ProductionPointer, 1)
            production = GaugeMetricFamily("tuneloop_production_revision",
                                           "Revision of the production pointer (grows on promotion/rollback).",
                                           labels=["version_id"])
            if pointer is not None:
                production.add_metric([pointer.version_id], pointer.revision)
            yield production

            messages = GaugeMetricFamily("tuneloop_messages", "Stored chat messages.")
            messages.add_metric([], session.exec(select(func.count()).select_from(Message)).one()[0])
            yield messages
            up = GaugeMetricFamily("tuneloop_database_up", "1 if the last scrape could read the database.")
            up.add_metric([], 1)
            yield up


def _process_registry():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class _Scrape:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    app = request.app
    scrape = _Scrape(_process_registry(), DatabaseCollector(app.state.db, getattr(app.state, "runtime", None)))
    return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)


# --- request ids and JSON logs --------------------------------------------------------------------
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tuneloop_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STANDARD_RECORD_KEYS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get() or getattr(record, "request_id", "-"),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_RECORD_KEYS and k not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


def configure_logging(settings: Settings) -> None:
    """Root logger → stderr, JSON or text. Idempotent; our access line replaces uvicorn's (which has no request id)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_tuneloop", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._tuneloop = True  # type: ignore[attr-defined]
    handler.addFilter(_RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
        for name in ("uvicorn", "uvicorn.error"):  # one format for everything on stderr
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    if route.__class__.__name__ == "Mount":
        return (path or "") + "/*"  # the Gradio UI and other mounted apps: one label each
    return path


class RequestObservabilityMiddleware:
    """Pure ASGI (streams pass through untouched): request id in and out, access log, request metrics."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route, method = _route_template(scope), scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(elapsed)
            log.info("%s %s %s", method, scope["path"], status, extra={
                "request_id": request_id, "method": method, "path": scope["path"], "route": route, "status": status,
                "duration_ms": round(elapsed * 1000, 1),
                "client": (scope.get("client") or ("-",))[0],
            })
            request_id_var.reset(token)


def install_observability(app: FastAPI, settings: Settings) -> None:
    """JSON/text logging, the request-id + metrics middleware, and ``GET /metrics``."""
    configure_logging(settings)
    app.add_middleware(RequestObservabilityMiddleware)
    if settings.metrics_enabled:
        app.include_router(router)
