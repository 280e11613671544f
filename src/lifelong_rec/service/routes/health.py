"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lifelong_rec.service.deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready, and why"}})
def readyz(engine: EngineDep) -> JSONResponse:
    """Ready once the learner has caught up with the log (after a restart: replayed it) and
    has not failed; an API replica, once it serves a published snapshot."""
    learner = engine.learner
    if learner.error is not None:
        reason = f"the learner failed: {learner.error!r}"
    elif not learner.caught_up.is_set() and engine.settings.role == "api":
        reason = (
            f"no snapshot of {engine.settings.model} is published yet: is `lifelong-rec learn "
            f"--model {engine.settings.model}` running against this database?"
        )
    elif not learner.caught_up.is_set():
        reason = f"the learner is catching up: {learner.lag} events to go"
    else:
        return JSONResponse(
            {"status": "ready", "model_version": learner.current.name, "lag": learner.lag}
        )
    return JSONResponse(
        {"status": "not ready", "reason": reason}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
    )


@router.get("/metrics", response_class=Response)
def metrics(engine: EngineDep) -> Response:
    engine.metrics.lag.set(engine.learner.lag)
    for model, quality in engine.online_quality().items():
        engine.metrics.observe_quality(model, quality)
    for model, recall in engine.retrieval_recall().items():
        engine.metrics.recall.labels(model).set(recall)
    for model, counts in engine.bounded_memory().items():
        for what, count in counts.items():
            engine.metrics.bounded.labels(model, what).set(count)
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
