"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Request counts and latencies, events ingested and rejected, learner lag, the serving
    model version, decisions and rewards per experiment arm."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lifelong_rec_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "lifelong_rec_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "lifelong_rec_events_ingested", "events appended to the log", registry=r
        )
        self.rejected = Counter(
            "lifelong_rec_events_rejected", "events rejected, by reason", ["reason"], registry=r
        )
        self.lag = Gauge(
            "lifelong_rec_learner_lag_events",
            "events in the log the learner has not learned",
            registry=r,
        )
        self.version = Gauge(
            "lifelong_rec_model_version", "the serving snapshot's version", registry=r
        )
        self.decisions = Counter(
            "lifelong_rec_decisions",
            "decisions served",
            ["experiment", "arm", "policy"],
            registry=r,
        )
        self.reward = Counter(
            "lifelong_rec_reward", "reward fed back", ["experiment", "arm", "policy"], registry=r
        )
        # Children by label values: ``labels()`` validates and locks on every call, which is
        # a measurable share of a recommendation's cost. The label sets are small.
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._decision_children: dict[tuple[str, str, str], object] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a request and time it, by its method, route template and status."""
        children = self._request_children.get((method, route, status))
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._request_children[method, route, status] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_decision(self, experiment: str, arm: str, policy: str) -> None:
        """Count a served decision of an experiment arm's (or the default) policy."""
        child = self._decision_children.get((experiment, arm, policy))
        if child is None:
            child = self._decision_children[experiment, arm, policy] = self.decisions.labels(
                experiment, arm, policy
            )
        child.inc()


class MetricsMiddleware:
    """Counts and times every request by its route template (``/users/{user_id}/...``), not
    its path, so the label set stays small. A pure ASGI middleware: no per-request task."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            self.metrics.observe_request(scope["method"], template, status, seconds)


class BodyLimitMiddleware:
    """Rejects a request body over ``limit`` bytes with 413: at once by its Content-Length,
    or, for a streamed (chunked) body, as soon as the bytes read pass the limit.

    A streamed body is read here, whole, before the app sees it: an error raised from inside
    the app's ``receive`` would reach the endpoint's body parsing, which FastAPI answers with
    400 whatever the error.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":  # the server reads no more than it says
                if value.isdigit() and int(value) > self.limit:
                    await _too_large(send, self.limit)
                    return
                await self.app(scope, receive, send)
                return
            streamed |= name == b"transfer-encoding"
        if not streamed:  # no body
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await _too_large(send, self.limit)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: the disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail": "request body over the limit of {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
