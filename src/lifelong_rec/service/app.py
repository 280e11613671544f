"""The app factory: ``create_app(settings)`` builds the FastAPI app around one engine, and
``server_config(settings, ...)`` the uvicorn server ``lifelong-rec serve`` runs it under.

The lifespan starts the engine (restore the newest snapshot, replay the log after it, start
learning) and stops it (persist the newest model). Errors map to status codes here, once: a
:class:`~lifelong_rec.service.errors.ClientError` is its 4xx, naming the field; a database that
cannot be reached is a 503 with ``Retry-After``; anything else is the service's fault, a 500
with a request id whose traceback is logged with that id.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi_offline
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import OpenBLASController, threadpool_limits

from lifelong_rec import __version__
from lifelong_rec.service.engine import Engine
from lifelong_rec.service.errors import ClientError, NotReady, ServiceError
from lifelong_rec.service.metrics import (
    BodyLimitMiddleware,
    MetricsMiddleware,
    limited_http_protocol,
)
from lifelong_rec.service.routes import (
    events,
    experiments,
    feedback,
    health,
    items,
    models,
    recommendations,
)
from lifelong_rec.service.settings import Settings
from lifelong_rec.service.ui import WriteGate, install
from lifelong_rec.store import is_postgres

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("lifelong_rec.service")

# Swagger UI's and ReDoc's files, shipped by the fastapi-offline package: /docs and /redoc
# load nothing from a CDN, so they work without internet.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS_URL = "/docs/assets"
# A request id the client sends is kept if it is this sane (it goes into the log).
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _limit_blas(threads: int | None) -> threadpool_limits:
    """Limit every BLAS library of the process to ``threads`` threads per call (None: no
    limit); the returned object restores the limits it found.

    One thread per call by default (:class:`Settings`): requests and the learner are the
    service's parallelism. numpy's and scipy's OpenBLAS keep one process-wide pool, and
    threadpoolctl lets only the first thread that sets it change it (the others' calls do
    nothing); the service owns its process, so it takes that role from whichever thread
    starts it (a test harness starts it from another thread than its own). An OpenBLAS
    threaded by OpenMP (faiss's) takes the limit per thread: the starting thread's, which
    under uvicorn is the event loop's, where requests run."""
    _release_blas()
    return threadpool_limits(threads, user_api="blas")


def _release_blas() -> None:
    """Let any thread set OpenBLAS's limits again (where threadpoolctl keeps a controlling
    thread: 3.8 does)."""
    release = getattr(OpenBLASController, "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving ``settings`` (read from the environment when None)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = _limit_blas(settings.blas_threads)
        engine = Engine(settings)
        try:
            engine.start()
            app.state.engine = engine
            try:
                yield
            finally:
                engine.stop()
        finally:
            limits.restore_original_limits()
            _release_blas()

    app = FastAPI(
        title="lifelong-rec",
        version=__version__,
        description="Recommendations that learn from every event: ingestion, serving with "
        "explanations and exploration, feedback, experiments.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for router in (events, recommendations, feedback, items, models, experiments, health):
        app.include_router(router.router)
    install(app)  # the dashboard, at /ui
    _offline_docs(app)
    _handle_errors(app, settings)
    # Outermost last: metrics, request id and errors, CORS, token (before any body byte is
    # read: the API's bearer token, or the dashboard's session), body limits, then the app.
    app.add_middleware(
        BodyLimitMiddleware, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    app.add_middleware(WriteGate, token=settings.token)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=_LazyMetrics(app))
    return app


def server_config(
    settings: Settings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn server of ``create_app(settings)`` on ``host:port``, with the settings'
    connection limits: header and keep-alive timeouts, header size, concurrent connections.
    (The body's limit and timeout are the app's: :class:`BodyLimitMiddleware`.)"""
    import uvicorn

    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        http=limited_http_protocol(settings.header_timeout_seconds, settings.max_header_bytes),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )


class _LazyMetrics:
    """The engine's metrics, which exist once the lifespan has started."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._app.state.engine.metrics.observe_request(method, route, status, seconds)


class RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-ID`` when it is sane, a new one
    otherwise), in ``request.state.request_id`` and the response's ``X-Request-ID``; answers
    an exception that escapes the app with a 500 that carries the id, and logs its traceback
    at ERROR with the same id.

    It answers where Starlette's ServerErrorMiddleware would answer and then re-raise, which
    made uvicorn close the keep-alive connection without notice. A pure ASGI middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "internal error, request %s: %s %s", request_id, scope["method"], scope["path"]
            )
            if started:  # a response is half sent: uvicorn closes the connection
                return
            body = json.dumps({"detail": "internal error", "request_id": request_id}).encode()
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": status.HTTP_500_INTERNAL_SERVER_ERROR,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_id({"type": "http.response.body", "body": body})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _CLIENT_REQUEST_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` from the assets shipped with the package."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _handle_errors(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
        return JSONResponse(
            {"detail": summary, "errors": problems},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, ClientError):
            return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status)
        if isinstance(exc, NotReady):
            return JSONResponse(
                {"detail": str(exc)}, status_code=exc.status, headers={"Retry-After": "1"}
            )
        raise exc  # the service's own fault: RequestIdMiddleware answers 500

    if is_postgres(settings.db):
        import psycopg

        @app.exception_handler(psycopg.OperationalError)
        async def unavailable(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
            # The database is down, restarting or out of reach: nothing was stored, and the
            # pool reconnects by itself. Said once per request, without a traceback.
            problem = (str(exc).splitlines() or [type(exc).__name__])[0]
            log.warning(
                "%s %s: the database is unreachable: %s", request.method, request.url.path, problem
            )
            return JSONResponse(
                {"detail": "the database is unreachable; retry shortly"},
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "1"},
            )


def _problem(error: dict[str, Any]) -> dict[str, str]:
    """One validation error as the field it is about and what is wrong with it."""
    loc = error["loc"]
    if error["type"] == "json_invalid":  # loc is ("body", position): not a field
        reason = error.get("ctx", {}).get("error", error["msg"])
        return {"field": "body", "problem": f"invalid JSON at character {loc[-1]}: {reason}"}
    return {"field": ".".join(str(part) for part in loc), "problem": str(error["msg"])}
