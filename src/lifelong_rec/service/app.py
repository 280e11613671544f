"""The app factory: ``create_app(settings)`` builds the FastAPI app around one engine.

The lifespan starts the engine (restore the newest snapshot, replay the log after it, start
learning) and stops it (persist the newest model). Errors map to status codes here, once: bad
input is a 4xx with a message that names the field, never a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from lifelong_rec import __version__
from lifelong_rec.service.engine import Engine
from lifelong_rec.service.errors import Conflict, NotFound, NotReady
from lifelong_rec.service.metrics import BodyLimitMiddleware, MetricsMiddleware
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """A FastAPI app serving ``settings`` (read from the environment when None)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings)
        engine.start()
        app.state.engine = engine
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="lifelong-rec",
        version=__version__,
        description="Recommendations that learn from every event: ingestion, serving with "
        "explanations and exploration, feedback, experiments.",
        lifespan=lifespan,
    )
    for router in (events, recommendations, feedback, items, models, experiments, health):
        app.include_router(router.router)
    _handle_errors(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=_LazyMetrics(app))
    return app


class _LazyMetrics:
    """The engine's metrics, which exist once the lifespan has started."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def __getattr__(self, name: str) -> object:
        return getattr(self._app.state.engine.metrics, name)


def _handle_errors(app: FastAPI) -> None:
    def error(code: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
        return JSONResponse(
            {"detail": summary, "errors": problems},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error(status.HTTP_404_NOT_FOUND, str(exc.args[0]))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return error(status.HTTP_409_CONFLICT, str(exc))

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        response = error(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return error(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _problem(error: dict[str, object]) -> dict[str, str]:
    """One validation error as the field it is about and what is wrong with it."""
    loc = error["loc"]
    if error["type"] == "json_invalid":  # loc is ("body", position): not a field
        reason = error.get("ctx", {}).get("error", error["msg"])
        return {"field": "body", "problem": f"invalid JSON at character {loc[-1]}: {reason}"}
    return {"field": ".".join(str(part) for part in loc), "problem": str(error["msg"])}
