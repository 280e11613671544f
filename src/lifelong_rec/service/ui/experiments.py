"""The Experiments page: every experiment with its arms' results (as ``GET /experiments``
reports them), their difference to the control with its interval and p-value, the running
one's results over time, and the form that starts a new one."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lifelong_rec.policy import policy_names
from lifelong_rec.service.experiments import compare
from lifelong_rec.service.schemas import ExperimentIn
from lifelong_rec.service.ui.charts import Series, interval_chart, line_chart
from lifelong_rec.service.ui.history import Sample

if TYPE_CHECKING:
    from lifelong_rec.service.engine import Engine

__all__ = ["ARM_ROWS", "DEFAULT_ARMS", "experiment_form", "experiments_page", "parse_experiment"]

#: arm rows of the form (two at least are filled in)
ARM_ROWS = 4
#: what a new form proposes: the model's own ranking against a little exploration
DEFAULT_ARMS = (
    {"name": "control", "policy": "greedy", "model": "", "weight": "1"},
    {"name": "explore", "policy": "epsilon(epsilon=0.1)", "model": "", "weight": "1"},
)


def experiments_page(engine: Engine, samples: Sequence[Sample]) -> dict[str, object]:
    experiments = []
    for experiment in reversed(engine.experiments.list()):  # the newest first
        arms = compare(experiment, engine.decisions.results(experiment.name))
        differences = [_points(arm) for arm in arms if arm.get("difference") is not None]
        experiments.append(
            {
                "name": experiment.name,
                "running": experiment.running,
                "created_at": experiment.created_at,
                "stopped_at": experiment.stopped_at,
                "control": experiment.arms[0].name,
                "arms": arms,
                "differences": interval_chart(
                    differences,
                    label=f"{experiment.name}: difference to the control",
                    unit=" pt",
                ),
                "over_time": _over_time(experiment.name, samples),
            }
        )
    return {
        "experiments": experiments,
        "running": next((e["name"] for e in experiments if e["running"]), None),
        "policies": policy_names(),
    }


def _points(arm: Mapping[str, Any]) -> tuple[str, float, float, float]:
    """An arm's difference to the control and its interval, in percentage points."""
    low, high = arm["interval"]
    return str(arm["name"]), 100 * arm["difference"], 100 * low, 100 * high


def experiment_form(values: Mapping[str, str] | None = None) -> dict[str, object]:
    """The create form's fields: ``values`` as posted, or the defaults."""
    if values is None:
        rows = [dict(arm) for arm in DEFAULT_ARMS]
        rows += [{"name": "", "policy": "", "model": "", "weight": ""}] * (ARM_ROWS - len(rows))
        name = time.strftime("ab-%Y%m%d-%H%M%S", time.gmtime())
        return {"name": name, "arms": rows}
    return {
        "name": values.get("name", ""),
        "arms": [
            {
                field: values.get(f"arm{row}_{field}", "")
                for field in ("name", "policy", "model", "weight")
            }
            for row in range(ARM_ROWS)
        ],
    }


def parse_experiment(values: Mapping[str, str]) -> ExperimentIn | str:
    """The posted form as the API's request body (validated by the same schema), or what
    is wrong with it."""
    arms = []
    for row in range(ARM_ROWS):
        name = values.get(f"arm{row}_name", "").strip()
        if not name:
            continue
        arm: dict[str, object] = {"name": name}
        for field in ("policy", "model"):
            text = values.get(f"arm{row}_{field}", "").strip()
            if text:
                arm[field] = text
        weight = values.get(f"arm{row}_weight", "").strip()
        if weight:
            try:
                arm["weight"] = float(weight)
            except ValueError:
                return f"arm {name}: the weight {weight!r} is not a number"
        arms.append(arm)
    try:
        return ExperimentIn.model_validate({"name": values.get("name", "").strip(), "arms": arms})
    except ValidationError as error:
        return "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )


def _over_time(name: str, samples: Sequence[Sample]) -> dict[str, object] | None:
    """The arms' rate of positive shown items and their decisions, as the dashboard sampled
    them while ``name`` ran in this process; None when it never sampled it."""
    mine = [s for s in samples if s.experiment == name and s.arms is not None]
    if not mine:
        return None
    arms = sorted({arm for s in mine for arm in s.arms or {}})
    at = [s.at for s in mine]

    def rate(sample: Sample, arm: str) -> float | None:
        counts = (sample.arms or {}).get(arm)
        if not counts or not counts.get("impressions"):
            return None
        return counts["positives"] / counts["impressions"]

    def decisions(sample: Sample, arm: str) -> float:
        return float((sample.arms or {}).get(arm, {}).get("decisions", 0))

    return {
        "rate": line_chart(
            [Series(arm, at, [rate(s, arm) for s in mine]) for arm in arms],
            label=f"{name}: share of shown items with a positive reward, per arm",
            empty="no feedback yet",
        ),
        "decisions": line_chart(
            [Series(arm, at, [decisions(s, arm) for s in mine]) for arm in arms],
            label=f"{name}: decisions served per arm",
            empty="no decision yet",
        ),
    }
