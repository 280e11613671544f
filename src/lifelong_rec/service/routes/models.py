"""``GET /models`` and ``POST /models/{version}/activate`` (rollback and back)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.schemas import ModelsOut

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsOut)
def models(engine: EngineDep) -> dict[str, object]:
    """The serving snapshot, the learner's progress and the snapshots on disk."""
    return engine.models()


@router.post(
    "/models/{version}/activate",
    response_model=ModelsOut,
    dependencies=[Writer],
    responses={404: {"description": "no such snapshot"}},
)
def activate(
    version: Annotated[str, Path(pattern=r"^([0-9]{1,9}|latest)$")], engine: EngineDep
) -> dict[str, object]:
    """Serve snapshot ``version`` and stay on it (a rollback: the learner keeps learning and
    saving, but serving does not move), or ``latest`` to follow the learner again."""
    return engine.activate(version)
