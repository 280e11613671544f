"""``GET /experiments``, ``POST /experiments``, ``POST /experiments/{name}/stop``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from lifelong_rec.service.deps import EngineDep, Writer
from lifelong_rec.service.engine import Engine
from lifelong_rec.service.experiments import Experiment, compare
from lifelong_rec.service.schemas import ExperimentIn, ExperimentOut

router = APIRouter(tags=["experiments"])


@router.get("/experiments", response_model=list[ExperimentOut])
def experiments(engine: EngineDep) -> list[dict[str, object]]:
    """Every experiment with its live results per arm."""
    return [_out(engine, experiment) for experiment in engine.experiments.list()]


@router.post(
    "/experiments",
    response_model=ExperimentOut,
    dependencies=[Writer],
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "another experiment is running"}},
)
def create(body: ExperimentIn, engine: EngineDep) -> dict[str, object]:
    """Start an A/B test: users are split between the arms (each a policy, and optionally
    a model of its own) by a stable hash of (experiment, user)."""
    created = engine.create_experiment(body.name, [arm.model_dump() for arm in body.arms])
    return _out(engine, engine.experiments.get(created.name) or created)


@router.post(
    "/experiments/{name}/stop",
    response_model=ExperimentOut,
    dependencies=[Writer],
    responses={404: {"description": "no such running experiment"}},
)
def stop(
    name: Annotated[str, Path(min_length=1, max_length=64)], engine: EngineDep
) -> dict[str, object]:
    """Stop the experiment: its users go back to the default policy and model."""
    return _out(engine, engine.stop_experiment(name))


def _out(engine: Engine, experiment: Experiment) -> dict[str, object]:
    results = engine.decisions.results(experiment.name)
    return {
        "name": experiment.name,
        "running": experiment.running,
        "created_at": experiment.created_at,
        "stopped_at": experiment.stopped_at,
        "arms": compare(experiment, results),
    }
