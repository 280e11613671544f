"""Update strategies (frozen, retrain, incremental with replay and pull), drift detection."""

from lifelong_rec.lifelong.drift import DriftDetector
from lifelong_rec.lifelong.replay import ReplayBuffer
from lifelong_rec.lifelong.strategies import (
    CADENCES,
    Frozen,
    Incremental,
    ModelFactory,
    Retrain,
    Strategy,
    parse_strategy,
)

__all__ = [
    "CADENCES",
    "DriftDetector",
    "Frozen",
    "Incremental",
    "ModelFactory",
    "ReplayBuffer",
    "Retrain",
    "Strategy",
    "parse_strategy",
]
