"""Prometheus metrics: jobs by state and queue depth (read at scrape time), request latency."""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select

from app.api.openapi import error_responses
from app.config import Settings
from app.db.models import Job
from app.db.session import session_factory
from app.jobs.queue import queue_depth

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class _StateCollector:
    def __init__(self, settings: Settings, app) -> None:
        self.settings, self.app = settings, app

    def collect(self):
        jobs = GaugeMetricFamily("kilotask_jobs", "Jobs by state", labels=["state"])
        with session_factory(self.settings)() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        depth = queue_depth(self.settings)
        if depth is not None:
            yield GaugeMetricFamily(
                "kilotask_queue_depth", "Messages waiting in the gpu queue", value=depth
            )
        serving = getattr(self.app.state, "serving", None)
        if serving is not None:
            yield from _serving_metrics(serving)


def _serving_metrics(rt):
    stats = rt.cache.stats
    counters = (
        ("hits", stats.hits, "Task cache hits"),
        ("misses", stats.misses, "Task cache misses (reconstructions)"),
        ("evictions", stats.evictions, "Task cache evictions"),
    )
    for name, value, doc in counters:
        yield CounterMetricFamily(f"kilotask_cache_{name}", doc, value=value)
    yield GaugeMetricFamily(
        "kilotask_resident_tasks",
        "Materialised tasks in memory",
        value=len(rt.cache.describe()["resident_tasks"]),
    )
    yield GaugeMetricFamily(
        "kilotask_resident_bytes",
        "Memory held by materialised tasks",
        value=rt.cache.resident_bytes,
    )
    summaries = (
        ("reconstruction_seconds", stats.rebuild_seconds, "Time to rebuild a task's weights"),
        ("batch_size", rt.batcher.batch_sizes, "Inputs per model call"),
        ("inference_seconds", rt.batcher.latencies, "Model time per batch"),
    )
    for name, tally, doc in summaries:
        yield SummaryMetricFamily(
            f"kilotask_{name}", doc, count_value=tally.count, sum_value=tally.total
        )


# label values come from this set, the app's route templates and the status codes, never
# from the raw request (200 made-up methods once made 3,600 series)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _TimedRequests:
    """Request latency by route and status, as plain ASGI middleware (Starlette's
    BaseHTTPMiddleware costs a task and a stream per request, a hot spot under load)."""

    def __init__(self, app, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_with_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.latency.labels(method, getattr(route, "path", "unmatched"), str(status)).observe(
                time.perf_counter() - start
            )


def install(app, settings: Settings) -> None:
    registry = CollectorRegistry()
    registry.register(_StateCollector(settings, app))
    latency = Histogram(
        "kilotask_request_seconds",
        "HTTP request latency",
        ["method", "route", "status"],
        registry=registry,
    )

    app.add_middleware(_TimedRequests, latency=latency)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        }
        | error_responses(503),
    )
    def metrics() -> Response:
        """Prometheus metrics; needs no key (503 while the database is unreachable)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
