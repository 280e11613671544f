"""Many processes over one PostgreSQL database (issue #14): API replicas (``serve --role api``)
and learner processes (``lifelong-rec learn``), run as real processes on loopback, killed at
random, and a database that restarts under them."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from serve_process import LearnProcess, ServeProcess
from test_service import stream_rows, wait_until

from lifelong_rec.service.snapshots import PostgresSnapshotStore
from lifelong_rec.store import open_log

pytestmark = pytest.mark.postgres

ROWS = stream_rows(20_000)


@dataclass
class Cluster:
    """A learner process and API replicas on one schema."""

    url: str
    schema: str
    folder: Path
    env: dict[str, str]
    replicas: list[ServeProcess] = field(default_factory=list)
    learners: list[LearnProcess] = field(default_factory=list)

    def replica(self) -> ServeProcess:
        name = f"replica-{len(self.replicas)}"
        server = ServeProcess(self.url, self.env, self.folder / f"{name}.log", ("--role", "api"))
        self.replicas.append(server)
        return server

    def learner(self) -> LearnProcess:
        name = f"learner-{len(self.learners)}"
        learner = LearnProcess(self.url, self.env, self.folder / f"{name}.log",
                               ("--log-level", "info"))  # fmt: skip
        self.learners.append(learner)
        return learner

    def store(self) -> PostgresSnapshotStore:
        return PostgresSnapshotStore(self.url, self.schema, "mf")

    def stop(self) -> None:
        for process in [*self.replicas, *self.learners]:
            process.stop()


@pytest.fixture
def cluster(postgres_url: str, postgres_schema: str, tmp_path: Path) -> Iterator[Cluster]:
    # MF, not the default ensemble: these tests are about the processes, and MF learns fastest
    env = {"LIFELONG_REC_DB_SCHEMA": postgres_schema, "LIFELONG_REC_PUBLISH_SECONDS": "0.2",
           "LIFELONG_REC_MODEL": "mf"}  # fmt: skip
    running = Cluster(postgres_url, postgres_schema, tmp_path, env)
    try:
        yield running
    finally:
        running.stop()


def post(server: ServeProcess, rows: list[dict[str, object]], key: str) -> httpx.Response:
    return httpx.post(f"{server.url}/events", json={"events": rows, "key": key}, timeout=30)


def serving(server: ServeProcess) -> tuple[str | None, bool, int, int]:
    """(serving version, pinned, offset learned, log end) as the replica reports them."""
    models = httpx.get(f"{server.url}/models", timeout=10).json()
    return (models["serving_version"], models["pinned"], models["learner_offset"],
            models["log_end"])  # fmt: skip


def all_serve(replicas: list[ServeProcess], version: str) -> bool:
    return all(serving(server)[0] == version for server in replicas)


def test_replicas_share_batches_feedback_experiments_and_rollbacks(cluster: Cluster) -> None:
    cluster.learner()
    a, b = cluster.replica(), cluster.replica()
    for server in (a, b):
        server.wait_healthy(60)

    # A keyed batch is stored once, whichever replica its retry lands on.
    assert post(a, ROWS[:3_000], "batch-1").json()["duplicate"] is False
    retried = post(b, ROWS[:3_000], "batch-1").json()
    assert retried["duplicate"] is True and retried["first_offset"] == 0

    # Both replicas load what the learner publishes.
    wait_until(lambda: serving(a)[2] == 3_000 and serving(b)[2] == 3_000, 60)
    wait_until(lambda: serving(a)[0] == serving(b)[0], 5)
    ready = httpx.get(f"{b.url}/readyz").json()
    assert ready["status"] == "ready" and ready["model_version"] == serving(b)[0]

    # Feedback for a decision made on A is taken by B, once.
    served = httpx.get(f"{a.url}/users/u00001/recommendations", params={"k": 5}).json()
    rewards = [{"item": served["items"][0]["item"], "kind": "click"}]
    feedback = {"decision_id": served["decision_id"], "rewards": rewards}
    time.sleep(0.2)  # the decision reaches the table within ~20 ms of the answer
    assert httpx.post(f"{b.url}/feedback", json=feedback).status_code == 200
    assert httpx.post(f"{a.url}/feedback", json=feedback).status_code == 409

    # An experiment created through A is served by B, with the same split.
    arms = [{"name": "control"}, {"name": "random", "policy": "random"}]
    created = httpx.post(f"{a.url}/experiments", json={"name": "ab", "arms": arms})
    assert created.status_code == 201, created.text
    users = [f"u{n:05d}" for n in range(1, 21)]

    def arms_of(server: ServeProcess) -> list[str | None]:
        return [
            httpx.get(f"{server.url}/users/{user}/recommendations").json()["arm"] for user in users
        ]

    wait_until(lambda: arms_of(b)[0] is not None, 5)
    assert arms_of(a) == arms_of(b) and set(arms_of(a)) == {"control", "random"}
    assert httpx.post(f"{b.url}/experiments/ab/stop").status_code == 200
    wait_until(lambda: arms_of(a)[0] is None, 5)

    # A rollback through B pins every replica; releasing it follows the learner again.
    store = cluster.store()
    try:
        old = store.versions()[0]
    finally:
        store.close()
    assert httpx.post(f"{b.url}/models/{old}/activate").status_code == 200
    wait_until(lambda: serving(a)[:2] == (f"mf-v{old}", True), 2)
    appended = post(a, ROWS[3_000:4_000], "batch-2").json()
    time.sleep(1.0)
    assert serving(a)[:2] == (f"mf-v{old}", True)  # pinned while the learner publishes
    assert httpx.post(f"{a.url}/models/latest/activate").status_code == 200
    end = appended["first_offset"] + 1_000
    wait_until(lambda: serving(b)[1] is False and serving(b)[2] >= end, 10)
    # Impressions alone (the lists just served) change no score, yet the learned offset a
    # replica reports reaches the log's end: the learner publishes for them too, now and then.
    wait_until(lambda: (state := serving(b))[2] == state[3], 10, every=0.2)


def test_kill_anything(cluster: Cluster) -> None:
    """Two API replicas and a learner; a client posts keyed batches to a replica at random
    (retrying on the other) while a random one of the three is SIGKILLed and restarted every
    few seconds. Every acknowledged batch is stored exactly once, nothing answers 5xx, the
    learner catches up and both replicas serve each new version within 2 s of its publish."""
    learner = cluster.learner()
    replicas = [cluster.replica(), cluster.replica()]
    for server in replicas:
        server.wait_healthy(60)
    processes: list[ServeProcess] = [*replicas, learner]
    acknowledged: dict[str, int] = {}
    failures: list[str] = []
    done = threading.Event()
    rng = random.Random(0)

    def client() -> None:
        start = 0
        with httpx.Client(timeout=10) as http:
            while not done.is_set():
                rows, key = ROWS[start % len(ROWS) :][:200], uuid.uuid4().hex
                start += 200
                for attempt in range(60):  # the retry goes to either replica
                    server = replicas[rng.randrange(2)]
                    try:
                        answer = http.post(f"{server.url}/events",
                                           json={"events": rows, "key": key})  # fmt: skip
                    except httpx.TransportError:
                        time.sleep(0.05)  # the replica just killed, or restarting
                        continue
                    if answer.status_code >= 500:
                        failures.append(f"{answer.status_code} {answer.text} (try {attempt})")
                    if answer.status_code == 200:
                        acknowledged[key] = len(rows)
                    break

    sender = threading.Thread(target=client)
    sender.start()
    kills = 0
    try:
        while kills < 10:
            time.sleep(2.0)
            victim = rng.choice(processes)
            victim.kill()
            kills += 1
            victim.restart()
            if victim is not learner:
                victim.wait_healthy(60)
    finally:
        done.set()
        sender.join(timeout=60)

    assert not failures, failures[:5]
    assert len(acknowledged) > 20
    with open_log(cluster.url, schema=cluster.schema) as log:
        batches = log.batches()
        end = log.end_offset
    stored = batches[batches.source == "http"]
    assert stored.key.is_unique  # exactly once
    counts = dict(zip(stored.key, stored["count"], strict=True))
    assert {key: counts.get(key) for key in acknowledged} == acknowledged  # none lost

    # The learner catches up, and both replicas serve what it publishes within 2 s.
    wait_until(lambda: all(serving(server)[2] >= end for server in replicas), 60, every=0.1)
    post(replicas[0], ROWS[:500], "last")
    store = cluster.store()
    try:
        before = store.newest()
        assert before is not None
        newest = wait_until(lambda: (n := store.newest()) and n.version > before.version and n, 30)
    finally:
        store.close()
    version = f"mf-v{newest.version}"  # type: ignore[union-attr]
    published = newest.created_at  # type: ignore[union-attr]
    wait_until(lambda: all_serve(replicas, version), 10, every=0.05)
    assert time.time() - published < 2.0, "a replica took over 2 s to serve a published model"


def test_a_second_learner_takes_over_from_the_committed_offset(cluster: Cluster) -> None:
    first = cluster.learner()
    holder = first.wait_for("holding the lease of mf", 60)
    second = cluster.learner()
    second.wait_for("waiting for the lease of mf", 60)
    server = cluster.replica()
    server.wait_healthy(60)
    post(server, ROWS[:5_000], "before")
    wait_until(lambda: serving(server)[2] == 5_000, 60)

    first.kill()
    killed = time.monotonic()
    taken = second.wait_for("holding the lease of mf", 10)
    assert taken - killed < 5.0, f"took over after {taken - killed:.1f} s"
    second.wait_for("restored offset 5000 of mf", 30)  # not from 0: from the last snapshot
    post(server, ROWS[5_000:6_000], "after")
    wait_until(lambda: serving(server)[2] == 6_000, 30)
    assert holder < taken


def _cluster_of(url: str) -> tuple[str, str] | None:
    """The (version, name) of the local PostgreSQL cluster on ``url``'s port, if this process
    may stop and start it (root with pg_ctlcluster)."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        return None
    if os.geteuid() != 0:
        return None
    port = httpx.URL(url.replace("postgresql://", "http://")).port or 5432
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if int(cluster_port) == port:
            return version, name
    return None


def test_a_database_restart_under_load(cluster: Cluster) -> None:
    """PostgreSQL stops and starts again under the processes: writes get 503 with Retry-After
    meanwhile, reads go on from memory, and everything recovers without a restart."""
    local = _cluster_of(cluster.url)
    if local is None:
        pytest.skip("needs root and pg_ctlcluster for the PostgreSQL server under test")
    learner = cluster.learner()
    server = cluster.replica()
    server.wait_healthy(60)
    assert post(server, ROWS[:2_000], "before").status_code == 200
    wait_until(lambda: serving(server)[2] == 2_000, 60)
    recommendations = f"{server.url}/users/u00001/recommendations"
    assert httpx.get(recommendations).status_code == 200

    subprocess.run(["pg_ctlcluster", *local, "stop", "-m", "fast"], check=True)
    try:
        down = post(server, ROWS[2_000:3_000], "during")
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"] == "1"
        served = httpx.get(recommendations, params={"k": 5})
        assert served.status_code == 200  # from the model in memory
        item = served.json()["items"][0]["item"]
        feedback = {"decision_id": served.json()["decision_id"],
                    "rewards": [{"item": item, "kind": "click"}]}  # fmt: skip
        started = time.monotonic()
        answer = httpx.post(f"{server.url}/feedback", json=feedback, timeout=30)
        assert answer.status_code == 503
        # The pools know the server is away: no waiting out db_timeout_seconds (5 s).
        assert time.monotonic() - started < 2.0
    finally:
        subprocess.run(["pg_ctlcluster", *local, "start"], check=True)

    def accepted() -> bool:
        answer = post(server, ROWS[2_000:3_000], "during")
        return answer.status_code == 200

    def learned() -> int:  # the pools reconnect with backoff: 503s may come a while longer
        answer = httpx.get(f"{server.url}/models", timeout=30)
        return answer.json()["learner_offset"] if answer.status_code == 200 else -1

    wait_until(accepted, 60, every=0.5)
    # The decision served while the database was down was kept, and written since.
    answer = httpx.post(f"{server.url}/feedback", json=feedback, timeout=30)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: learned() >= 3_000, 60, every=0.2)
    assert learner.process.poll() is None and server.process.poll() is None
    with open_log(cluster.url, schema=cluster.schema) as log:
        keys = set(log.batches().key.dropna())
    assert {"before", "during"} <= keys


def test_an_item_added_through_a_replica_reaches_the_learners_text_model(
    postgres_url: str, postgres_schema: str, tmp_path: Path
) -> None:
    """A news item PUT to an API replica is announced to the learner process, whose text
    model makes it rankable; the replica serves it once the next snapshot is published."""
    model = "transformer(epochs=1, dim=16, max_len=8, layers=1, explain_steps=4)"
    env = {"LIFELONG_REC_DB_SCHEMA": postgres_schema, "LIFELONG_REC_PUBLISH_SECONDS": "0.2",
           "LIFELONG_REC_MODEL": model}  # fmt: skip
    cluster = Cluster(postgres_url, postgres_schema, tmp_path, env)
    try:
        learner = cluster.learner()
        server = cluster.replica()
        server.wait_healthy(60)
        post(server, ROWS[:1_000], "first")
        wait_until(lambda: serving(server)[2] >= 1_000, 120, every=0.2)
        item = {"title": "Storm closes the harbour", "text": "A storm hit the coast overnight."}
        answer = httpx.put(f"{server.url}/items/news-1", json=item, timeout=30)
        assert answer.status_code == 200, answer.text
        learner.wait_for("1 catalogue items added or changed", 30)

        def recommendable() -> bool:
            return httpx.get(f"{server.url}/items/news-1").json()["recommendable"]

        wait_until(recommendable, 30, every=0.2)
    finally:
        cluster.stop()


def test_policies_learn_from_every_replicas_feedback(cluster: Cluster) -> None:
    """Feedback taken by two replicas teaches one policy, in the learner process; it is saved
    with the snapshots with its place in the settlements, and every replica serves it."""
    cluster.env["LIFELONG_REC_POLICY"] = "thompson"
    cluster.learner()
    a, b = cluster.replica(), cluster.replica()
    for server in (a, b):
        server.wait_healthy(60)
    post(a, ROWS[:2_000], "events")
    wait_until(lambda: serving(a)[2] >= 2_000 and serving(b)[2] >= 2_000, 60)
    shown = 0
    for n, (decider, receiver) in enumerate([(a, b), (b, a), (a, a), (b, b)]):
        served = httpx.get(f"{decider.url}/users/u{n + 1:05d}/recommendations",
                           params={"k": 4}).json()  # fmt: skip
        shown += len(served["items"])
        rewards = [{"item": served["items"][0]["item"], "kind": "purchase"}]
        time.sleep(0.2)  # the decision reaches the table within ~20 ms
        feedback = {"decision_id": served["decision_id"], "rewards": rewards}
        assert httpx.post(f"{receiver.url}/feedback", json=feedback).status_code == 200

    store = cluster.store()
    try:

        def taught() -> tuple[float, float, int] | None:
            newest = store.newest()
            if newest is None or newest.settled != 4:
                return None
            policy = store.load_policies(newest.version)["default"]
            return policy.successes_.sum(), policy.failures_.sum(), newest.version

        wins, losses, version = wait_until(taught, 30, every=0.2)  # type: ignore[misc]
    finally:
        store.close()
    assert (wins, wins + losses) == (4.0, shown)  # one purchase per decision, every shown item

    def served_version(server: ServeProcess) -> int:
        return int(str(serving(server)[0]).rsplit("-v", 1)[1])

    wait_until(lambda: min(served_version(a), served_version(b)) >= version, 5)

    # A replica that starts now serves the taught policy from the first snapshot it loads.
    from lifelong_rec.service import Settings
    from lifelong_rec.service.engine import Engine

    engine = Engine(Settings(db=cluster.url, db_schema=cluster.schema, role="api",
                             model="mf", policy="thompson"))  # fmt: skip
    engine.start()
    try:
        assert engine.default_policy.successes_.sum() == 4.0  # type: ignore[attr-defined]
    finally:
        engine.stop()
