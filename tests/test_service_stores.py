"""The service's decisions and experiments tables, run against both backends (SQLite, PostgreSQL):
feedback accepted once, also when two stores on one database (two replicas) settle the same
decision at once, and one running experiment at a time, also when two stores start one at once.

The PostgreSQL cases need $LIFELONG_REC_TEST_POSTGRES (see ``postgres_url`` in conftest.py).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from lifelong_rec.policy import Decisions
from lifelong_rec.service.decisions import DecisionStore, PostgresDecisionStore, Served
from lifelong_rec.service.errors import Conflict
from lifelong_rec.service.experiments import (
    Arm,
    ExperimentRunning,
    Experiments,
    PostgresExperiments,
)
from lifelong_rec.service.stores import open_decisions, open_experiments
from lifelong_rec.store import open_log

ARMS = (Arm("a", "greedy", 1.0), Arm("b", "epsilon(0.1)", 1.0, model="popularity"))


@dataclass(frozen=True)
class Backend:
    """How to open (another connection to) one test's tables: the target and schema."""

    name: str
    target: str
    schema: str

    def decisions(self) -> DecisionStore | PostgresDecisionStore:
        return open_decisions(self.target, schema=self.schema)

    def experiments(self) -> Experiments | PostgresExperiments:
        return open_experiments(self.target, schema=self.schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "events.db"), "public")
    url = request.getfixturevalue("postgres_url")
    return Backend("postgres", url, request.getfixturevalue("postgres_schema"))


@pytest.fixture
def store(backend: Backend) -> Iterator[DecisionStore | PostgresDecisionStore]:
    store = backend.decisions()
    yield store
    store.close()


@pytest.fixture
def experiments(backend: Backend) -> Iterator[Experiments | PostgresExperiments]:
    experiments = backend.experiments()
    yield experiments
    experiments.close()


def served(
    decision_id: str, user: str = "u1", experiment: str | None = "ab", arm: str | None = "a"
) -> Served:
    decisions = Decisions(
        users=np.array([user]),
        slates=np.array([["i1", "i2", "i3"]]),
        propensities=np.array([[1.0, 0.5, 0.25]]),
        policy="greedy",
        params={},
        model_version="v1",
        explored=np.zeros(1, dtype=bool),
        exploring=np.array([[False, True, False]]),
    )
    return Served(decision_id, decisions, experiment, arm, time.time())


# ---------------------------------------------------------------------- factories


def test_factories_pick_the_backend_by_target(backend: Backend) -> None:
    decisions, experiments = backend.decisions(), backend.experiments()
    try:
        postgres = backend.name == "postgres"
        assert isinstance(decisions, PostgresDecisionStore if postgres else DecisionStore)
        assert isinstance(experiments, PostgresExperiments if postgres else Experiments)
    finally:
        decisions.close()
        experiments.close()


def test_a_schema_is_refused_for_an_sqlite_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is for PostgreSQL"):
        open_decisions(tmp_path / "events.db", schema="other")
    with pytest.raises(ValueError, match="is for PostgreSQL"):
        open_experiments(str(tmp_path / "events.db"), schema="other")


# ---------------------------------------------------------------------- decisions


def test_a_decision_is_got_back_from_memory_and_from_the_table(
    backend: Backend, store: DecisionStore | PostgresDecisionStore
) -> None:
    original = served("d1", user="alice")
    features = np.arange(6.0).reshape(1, 3, 2)  # what only memory keeps (with the params)
    original.decisions = replace(original.decisions, params={"epsilon": 0.1}, features=features)
    store.add(original)
    kept = store.get("d1")  # from memory: every field, as a new object
    assert kept is not None and kept is not original
    assert (kept.id, kept.experiment, kept.arm, kept.created_at, kept.rewards) == (
        "d1", "ab", "a", original.created_at, None,
    )  # fmt: skip
    for name in ("users", "slates", "propensities", "explored", "features", "exploring"):
        np.testing.assert_array_equal(
            getattr(kept.decisions, name), getattr(original.decisions, name)
        )
    assert (kept.decisions.policy, kept.decisions.params, kept.decisions.model_version) == (
        "greedy", {"epsilon": 0.1}, "v1",
    )  # fmt: skip
    assert gc.collect() >= 0 and not gc.is_tracked(store._recent["d1"])  # out of the GC's walk
    assert store.settle(kept, [1.0, 0.0, 0.0])
    assert store.get("d1").rewards == [1.0, 0.0, 0.0]  # memory follows the feedback
    assert not store.settle(store.get("d1"), [0.0, 0.0, 1.0])
    store.flush()
    other = backend.decisions()  # a fresh process: not in its memory
    try:
        again = other.get("d1")
        assert again is not None
        assert (again.id, again.experiment, again.arm, again.rewards) == (
            "d1", "ab", "a", [1.0, 0.0, 0.0],
        )  # fmt: skip
        assert again.decisions.users.tolist() == ["alice"]
        assert again.decisions.slates.tolist() == [["i1", "i2", "i3"]]
        assert again.decisions.propensities.tolist() == [[1.0, 0.5, 0.25]]
        assert again.decisions.exploring.tolist() == [[False, True, False]]
        assert again.decisions.model_version == "v1"
        assert other.get("unknown") is None
    finally:
        other.close()


def test_impressions_reach_the_event_log(
    backend: Backend, store: DecisionStore | PostgresDecisionStore
) -> None:
    store.add(served("d1"))
    store.add(served("d2"))
    store.flush()
    with open_log(backend.target, schema=backend.schema) as log:
        events = log.read(0, log.end_offset)
    assert len(events) == 6  # two slates of three
    assert events.item.tolist() == ["i1", "i2", "i3"] * 2
    assert np.all(events.weight == 0)


def test_feedback_is_settled_once(store: DecisionStore | PostgresDecisionStore) -> None:
    decision = served("d1")
    store.add(decision)
    assert store.settle(decision, [1.0, 0.0, 0.0])
    assert decision.rewards == [1.0, 0.0, 0.0]
    assert not store.settle(decision, [0.0, 1.0, 0.0])
    assert decision.rewards == [1.0, 0.0, 0.0]


def test_results_per_arm(store: DecisionStore | PostgresDecisionStore) -> None:
    decisions = [served(f"d{n}", arm="ab"[n % 2]) for n in range(5)]  # a: 0, 2, 4; b: 1, 3
    for decision in decisions:
        store.add(decision)
    store.settle(decisions[0], [1.0, 0.0, 2.0])
    store.settle(decisions[1], [0.0, 0.0, 0.0])
    store.add(served("other", experiment="another"))
    assert store.results("ab") == {
        "a": {"decisions": 3, "impressions": 3, "positives": 2, "reward": 3.0},
        "b": {"decisions": 2, "impressions": 3, "positives": 0, "reward": 0.0},
    }
    assert store.results("nothing") == {}


def test_two_replicas_settle_a_decision_once(backend: Backend) -> None:
    """A decision made by replica A gets feedback through A and through B at the same time:
    exactly one is accepted, and the table keeps its rewards."""
    rounds = 20
    replica_a, replica_b = backend.decisions(), backend.decisions()
    try:
        for number in range(rounds):
            decision = served(f"d{number}")
            replica_a.add(decision)
            replica_a.flush()  # its writer would within ~20 ms
            from_table = replica_b.get(decision.id)
            assert from_table is not None and from_table is not decision
            start = threading.Barrier(2)
            accepted: list[tuple[str, bool]] = []

            def settle(
                name: str,
                store: DecisionStore | PostgresDecisionStore,
                one: Served,
                start: threading.Barrier = start,
                accepted: list[tuple[str, bool]] = accepted,
            ) -> None:
                start.wait()
                accepted.append((name, store.settle(one, [float(name == "a"), 0.0, 0.0])))

            threads = [
                threading.Thread(target=settle, args=("a", replica_a, decision)),
                threading.Thread(target=settle, args=("b", replica_b, from_table)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            winners = [name for name, ok in accepted if ok]
            assert len(accepted) == 2 and len(winners) == 1, accepted
            reward = 1.0 if winners == ["a"] else 0.0
            fresh = backend.decisions()
            try:
                settled = fresh.get(decision.id)
                assert settled is not None and settled.rewards == [reward, 0.0, 0.0]
            finally:
                fresh.close()
        counts = replica_b.results("ab")["a"]
        assert counts["decisions"] == rounds and counts["impressions"] == 3 * rounds
    finally:
        replica_a.close()
        replica_b.close()


# ---------------------------------------------------------------------- experiments


def test_experiments_create_list_stop(
    backend: Backend, experiments: Experiments | PostgresExperiments
) -> None:
    assert experiments.list() == [] and experiments.running() is None
    first = experiments.create("first", ARMS)
    assert first.running and first.arms == ARMS
    assert experiments.exists("first") and not experiments.exists("second")
    assert experiments.running() == first
    stopped = experiments.stop("first")
    assert stopped.name == "first" and stopped.stopped_at is not None
    assert experiments.running() is None
    second = experiments.create("second", ARMS[:1])
    assert [e.name for e in experiments.list()] == ["first", "second"]
    assert experiments.get("second") == second and experiments.get("third") is None
    other = backend.experiments()  # what another process sees
    try:
        assert other.list() == experiments.list()
        assert other.running() == second
    finally:
        other.close()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.create("first", ARMS), KeyError, "exists already"),
        (lambda e: e.create("second", ARMS), ExperimentRunning, "'first' is running"),
        (lambda e: e.stop("second"), KeyError, "is not running"),
        (lambda e: e.stop("never"), KeyError, "is not running"),
    ],
)
def test_experiments_refuse(
    experiments: Experiments | PostgresExperiments,
    call: Callable[[Experiments | PostgresExperiments], object],
    error: type[Exception],
    message: str,
) -> None:
    experiments.create("first", ARMS)
    with pytest.raises(error, match=message):
        call(experiments)
    assert [e.name for e in experiments.list()] == ["first"]
    assert experiments.running() is not None


def test_a_used_name_is_refused_after_it_stopped(
    experiments: Experiments | PostgresExperiments,
) -> None:
    experiments.create("first", ARMS)
    experiments.stop("first")
    with pytest.raises(KeyError, match="exists already"):
        experiments.create("first", ARMS)
    with pytest.raises(KeyError, match="is not running"):
        experiments.stop("first")


def test_another_running_experiment_is_a_conflict() -> None:
    """The engine turns a Conflict into 409 (and a KeyError from create into 422)."""
    assert issubclass(ExperimentRunning, Conflict) and ExperimentRunning("x").status == 409


def test_two_replicas_racing_to_start_an_experiment(backend: Backend) -> None:
    """Two replicas start different experiments at the same time: exactly one runs."""
    rounds = 10
    replicas = [backend.experiments(), backend.experiments()]
    try:
        for number in range(rounds):
            start = threading.Barrier(2)
            outcomes: dict[str, object] = {}

            def create(
                name: str,
                store: Experiments | PostgresExperiments,
                start: threading.Barrier = start,
                outcomes: dict[str, object] = outcomes,
            ) -> None:
                start.wait()
                try:
                    outcomes[name] = store.create(name, ARMS)
                except ExperimentRunning as error:
                    outcomes[name] = error

            names = [f"r{number}a", f"r{number}b"]
            threads = [
                threading.Thread(target=create, args=(name, replica))
                for name, replica in zip(names, replicas, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            started = [name for name in names if not isinstance(outcomes[name], Exception)]
            assert len(outcomes) == 2 and len(started) == 1, outcomes
            running = replicas[0].running()
            assert running is not None and running.name == started[0]
            assert [e.name for e in replicas[1].list() if e.running] == started
            replicas[1].stop(started[0])
    finally:
        for replica in replicas:
            replica.close()
