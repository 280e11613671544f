"""A/B tests between policies and models: a stable split of users, and live results.

One experiment runs at a time. A user's arm is a stable hash of (experiment, user): the same
user always sees the same arm, across requests and restarts. Each arm has its own policy
object, learning from its own traffic; an arm that names a model is served by a learner of its
own over the same log (the engine starts it), so every model learns from all events and the
arms differ only in what they serve. Results are read from the decisions table, so they
survive a restart; arms are compared with the first arm by a two-proportion test on the
share of shown items with a positive reward.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong_rec.evaluate.simulate.stats import two_proportion_test
from lifelong_rec.models import parse_model
from lifelong_rec.policy import Policy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments(
    name TEXT PRIMARY KEY, arms TEXT NOT NULL, created_at REAL NOT NULL, stopped_at REAL);
"""


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str  # a parse_policy spec
    weight: float
    model: str | None = None  # a parse_model spec: None serves the service's own model


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    created_at: float
    stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def arm_of(self, user: str) -> int:
        """The arm index of ``user``: a stable hash of (experiment, user) against the weights."""
        digest = hashlib.blake2b(f"{self.name}\x00{user}".encode(), digest_size=8).digest()
        position = int.from_bytes(digest, "big") / 2.0**64
        weights = np.array([arm.weight for arm in self.arms])
        edges = np.cumsum(weights) / weights.sum()
        return int(min(np.searchsorted(edges, position, side="right"), len(self.arms) - 1))


class Experiments:
    """The experiments table, and a policy per arm of the running one."""

    def __init__(self, db: str | Path, make_policy: callable) -> None:
        self._db = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # guards the connection
        # Held from the "another is running" check to the start or stop, so two concurrent
        # requests cannot both start (or both stop) an experiment.
        self._switch = threading.Lock()
        self._make_policy = make_policy
        self.running: Experiment | None = None
        self.policies: list[Policy] = []
        for experiment in self.list():
            if experiment.running:
                self._start(experiment)

    def list(self) -> list[Experiment]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, arms, created_at, stopped_at FROM experiments ORDER BY created_at"
            ).fetchall()
        return [
            Experiment(name, tuple(Arm(**arm) for arm in json.loads(arms)), created, stopped)
            for name, arms, created, stopped in rows
        ]

    def create(self, name: str, arms: list[Arm]) -> Experiment:
        """Start an experiment.

        Raises
        ------
        ValueError
            A name used before, arm names that repeat, or a policy spec that does not parse.
        RuntimeError
            Another experiment is running.
        """
        with self._switch:
            if self.running is not None:
                raise RuntimeError(f"experiment {self.running.name!r} is running; stop it first")
            if len({arm.name for arm in arms}) != len(arms):
                raise ValueError("arms: arm names must be distinct")
            for arm in arms:
                try:
                    self._make_policy(arm.policy)
                    if arm.model is not None:
                        parse_model(arm.model)[1]()  # made once: its parameters are checked
                except (ValueError, TypeError) as error:
                    raise ValueError(f"arms: {arm.name}: {error}") from None
            experiment = Experiment(name, tuple(arms), time.time())
            with self._lock:
                try:
                    self._db.execute(
                        "INSERT INTO experiments(name, arms, created_at) VALUES (?, ?, ?)",
                        (name, json.dumps([arm.__dict__ for arm in arms]), experiment.created_at),
                    )
                except sqlite3.IntegrityError:
                    raise ValueError(f"name: an experiment {name!r} exists already") from None
            self._start(experiment)
            return experiment

    def stop(self, name: str) -> Experiment:
        """Stop the running experiment ``name``. Raises KeyError if it is not running."""
        with self._switch:
            running = self.running
            if running is None or running.name != name:
                raise KeyError(f"experiment {name!r} is not running")
            stopped = time.time()
            with self._lock:
                self._db.execute(
                    "UPDATE experiments SET stopped_at = ? WHERE name = ?", (stopped, name)
                )
            # ``policies`` stays: a request that read ``running`` just before still indexes it
            self.running = None
            return Experiment(running.name, running.arms, running.created_at, stopped)

    def assign(self, user: str) -> tuple[Experiment, int] | None:
        """The running experiment and the user's arm in it, if one runs."""
        experiment = self.running
        return None if experiment is None else (experiment, experiment.arm_of(user))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _start(self, experiment: Experiment) -> None:
        self.policies = [self._make_policy(arm.policy) for arm in experiment.arms]
        self.running = experiment  # after the policies: readers read ``running`` first


def compare(experiment: Experiment, results: dict[str, dict[str, float]]) -> list[dict]:
    """Per arm: counts, rate of positive shown items, and the difference to the first arm
    with its 95 % interval and p-value (two-proportion test)."""
    out = []
    first = results.get(experiment.arms[0].name)
    for index, arm in enumerate(experiment.arms):
        counts = results.get(
            arm.name, {"decisions": 0, "impressions": 0, "positives": 0, "reward": 0.0}
        )
        impressions, positives = int(counts["impressions"]), int(counts["positives"])
        entry = {
            "name": arm.name,
            "policy": arm.policy,
            "model": arm.model,
            "weight": arm.weight,
            "decisions": int(counts["decisions"]),
            "impressions": impressions,
            "positives": positives,
            "reward": float(counts["reward"]),
            "rate": positives / impressions if impressions else None,
        }
        if index and first and first["impressions"] and impressions:
            test = two_proportion_test(
                first["positives"], first["impressions"], positives, impressions
            )
            entry |= {
                "difference": test.difference,
                "interval": list(test.interval),
                "p_value": test.p_value,
            }
        out.append(entry)
    return out
