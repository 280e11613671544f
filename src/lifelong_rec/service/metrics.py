"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

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
        self.explain_timeouts = Counter(
            "lifelong_rec_explain_timeouts",
            "lists served without reasons: explaining took over explain_seconds",
            registry=r,
        )
        self.unlogged = Counter(
            "lifelong_rec_unlogged_reads",
            "lists served without logging: a client without the token over its budget",
            registry=r,
        )
        self.online = Gauge(
            "lifelong_rec_online_quality",
            "test-then-train quality of the serving model on the incoming events, by model "
            "(the service's or an arm's), metric (hr_at_10, ndcg_at_10) and window (all, recent)",
            ["model", "metric", "window"],
            registry=r,
        )
        self.scored = Gauge(
            "lifelong_rec_online_scored_events",
            "incoming events scored against the serving model before it learned them",
            ["model"],
            registry=r,
        )
        self.recall = Gauge(
            "lifelong_rec_retrieval_recall",
            "recall@k of the serving model's approximate top-k index against an exact scan, "
            "on a sample of live queries (models with retrieval='ivf')",
            ["model"],
            registry=r,
        )
        self.bounded = Gauge(
            "lifelong_rec_model_memory",
            "models that bound their memory (admit_after, expire_after_days) or serve "
            "compressed tables (serve_precision): bytes their arrays hold (what=model_bytes), "
            "bytes of the tables scoring reads (served_bytes), events of ids not admitted yet, "
            "ids expired and the bytes that freed (unadmitted_events, expired_users, "
            "expired_items, freed_bytes)",
            ["model", "what"],
            registry=r,
        )
        # Children by label values: ``labels()`` validates and locks on every call, which is
        # a measurable share of a recommendation's cost. The label sets are small.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._decision_children: dict[tuple[str, str, str], Counter] = {}

    def observe_quality(self, model: str, quality: dict[str, float]) -> None:
        """Set the online quality gauges of ``model`` from ``OnlineQuality.to_dict()``."""
        for metric in ("hr_at_10", "ndcg_at_10"):
            self.online.labels(model, metric, "all").set(quality[metric])
            self.online.labels(model, metric, "recent").set(quality[f"recent_{metric}"])
        self.scored.labels(model).set(quality["scored"])

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


class RequestObserver(Protocol):
    """What :class:`MetricsMiddleware` reports each request to (a :class:`Metrics`)."""

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None: ...


class MetricsMiddleware:
    """Counts and times every request by its route template (``/users/{user_id}/...``), not
    its path, so the label set stays small. A pure ASGI middleware: no per-request task."""

    def __init__(self, app: ASGIApp, metrics: RequestObserver) -> None:
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
    """Reads a request's body, whole, before the app sees it: 413 for one over ``limit``
    bytes (at once by its Content-Length, or as soon as a streamed body passes the limit),
    408 for one not received within ``timeout`` seconds (a client that trickles its body
    holds a connection and a task for as long as it likes otherwise).

    Read here because an error raised from inside the app's ``receive`` would reach the
    endpoint's body parsing, which FastAPI answers with 400 whatever the error.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, streamed = 0, False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                length = int(value)
            else:  # a length that is no number is read as a stream (the server refuses it)
                streamed |= name in (b"transfer-encoding", b"content-length")
        if length > self.limit:
            await _reply(send, 413, f"request body over the limit of {self.limit} bytes")
            return
        if not length and not streamed:  # no body
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunks.append(message.get("body", b""))
                    seen += len(chunks[-1])
                    if seen > self.limit:
                        detail = f"request body over the limit of {self.limit} bytes"
                        await _reply(send, 413, detail)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            detail = f"request body not received within {self.timeout:g} s"
            await _reply(send, 408, detail, close=True)  # the rest of the body is unread
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: the disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail, "field": "body"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def limited_http_protocol(header_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools) with a header timeout and a header size limit, for
    ``uvicorn.Config(http=...)``: neither is in uvicorn, whose only timer is the keep-alive
    one, armed after a response. A connection that sends nothing, or a request line and
    headers a byte at a time, was held open for good; a thousand of them held a thousand
    sockets (the slowloris attack).

    A request's line and headers must arrive within ``header_timeout`` seconds of its first
    byte (of the connection's opening, for the first request), and within
    ``max_header_bytes``; the connection is closed otherwise, with a 408 or a 431 when no
    response is under way on it.
    """
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.header_timer: asyncio.TimerHandle | None = None  # armed until headers end
            self.header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_done()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.header_timer is not None and not self.transport.is_closing():
                self.header_bytes += len(data)  # the chunk had no end of headers
                if self.header_bytes > max_header_bytes:
                    self._headers_done()
                    self._refuse(431, "Request Header Fields Too Large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.header_timer is None:
                self._await_headers()

        def on_headers_complete(self) -> None:
            self._headers_done()
            super().on_headers_complete()

        def _await_headers(self) -> None:
            self.header_bytes = 0
            self.header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _headers_done(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_late(self) -> None:
            self.header_timer = None
            if self.transport.is_closing():
                return
            if self.pipeline or not (self.cycle is None or self.cycle.response_complete):
                # a request of this connection is still being answered, and reading may be
                # paused until it is: the wait may be the server's, so it starts again
                self.header_timer = self.loop.call_later(header_timeout, self._headers_late)
                return
            self._refuse(408, "Request Timeout")

        def _refuse(self, status: int, reason: str) -> None:
            if self.cycle is None or self.cycle.response_complete:  # between responses
                self.transport.write(
                    f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n"
                    "connection: close\r\n\r\n".encode()
                )
            self.transport.close()

    return LimitedHttpToolsProtocol
