"""The whole service on PostgreSQL (issue #14): one process (``--role all``) whose event log,
decisions and experiments live in a PostgreSQL schema, driven through the real app."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_service import stream_rows, wait_until

from lifelong_rec.service import Settings, create_app
from lifelong_rec.service.snapshots import PostgresSnapshotStore
from lifelong_rec.store import open_log


@pytest.mark.postgres
def test_the_service_runs_on_postgresql(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    settings = Settings(
        db=postgres_url, db_schema=postgres_schema, publish_seconds=0.05,
        persist_seconds=0.2, policy="epsilon(epsilon=0.2)",
    )  # fmt: skip
    rows = stream_rows(2_000)
    with TestClient(create_app(settings)) as client:
        posted = client.post("/events", json={"events": rows, "key": "first"})
        assert posted.status_code == 200, posted.text
        again = client.post("/events", json={"events": rows, "key": "first"})
        assert again.json()["duplicate"] is True  # exactly once, in PostgreSQL
        wait_until(lambda: client.get("/models").json()["learner_offset"] >= len(rows), 60)

        served = client.get("/users/u00001/recommendations", params={"k": 5}).json()
        item = served["items"][0]["item"]
        rewards = [{"item": item, "kind": "purchase"}]
        answer = client.post("/feedback", json={"decision_id": served["decision_id"],
                                                "rewards": rewards})  # fmt: skip
        assert answer.status_code == 200, answer.text
        twice = client.post("/feedback", json={"decision_id": served["decision_id"],
                                               "rewards": rewards})  # fmt: skip
        assert twice.status_code == 409

        arms = [{"name": "a"}, {"name": "b", "policy": "random"}]
        assert client.post("/experiments", json={"name": "pg", "arms": arms}).status_code == 201
        listed = client.get("/experiments").json()
        assert [e["name"] for e in listed if e["running"]] == ["pg"]
        assert client.post("/experiments/pg/stop").status_code == 200

    with open_log(postgres_url, schema=postgres_schema) as log:
        kinds = set(log.read().kind_names.tolist())
        assert len(log) > len(rows)  # the events, the impressions and the purchase
    assert {"impression", "purchase"} <= kinds
    # The snapshots are in the database: a new process restores the model from there.
    store = PostgresSnapshotStore(postgres_url, postgres_schema, "auto")
    try:
        newest = store.newest()
        assert newest is not None and newest.offset >= len(rows)
        assert store.load(newest.version)[0].items_.lookup([rows[0]["item"]])[0] >= 0
    finally:
        store.close()


def test_a_postgresql_db_keeps_its_snapshots_in_the_database(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keeps its snapshots in the database"):
        Settings(db="postgresql://postgres@127.0.0.1:5432/test", snapshots=tmp_path)
    with pytest.raises(ValueError, match="role: an API replica follows learners"):
        Settings(db=str(tmp_path / "events.db"), role="api")
