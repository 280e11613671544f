"""A/B tests between models: an arm with a model of its own is served by its own learner over
the same log (in-process, through FastAPI's TestClient)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from lifelong_rec.data import synthetic_stream
from lifelong_rec.service import Settings, create_app


def _serving(client: TestClient, user: str) -> dict[str, object]:
    answer = client.get(f"/users/{user}/recommendations", params={"k": 5})
    assert answer.status_code == 200, answer.json()
    return answer.json()


def test_model_arms_serve_their_own_model_and_report_per_arm(tmp_path):
    data = synthetic_stream(n_users=120, n_items=100, n_events=4_000, seed=1)
    settings = Settings(db=tmp_path / "events.db", publish_seconds=0.05, persist_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json={"events": data.events.to_records()}).status_code == 200
        deadline = time.monotonic() + 30
        while client.get("/models").json()["serving_version"] is None:
            assert time.monotonic() < deadline, "the service's model never published"
            time.sleep(0.02)
        arms = [{"name": "default"}, {"name": "knn", "model": "itemknn(neighbours=20)"}]
        created = client.post("/experiments", json={"name": "models", "arms": arms})
        assert created.status_code == 201
        assert [arm["model"] for arm in created.json()["arms"]] == [None, "itemknn(neighbours=20)"]

        # Until the arm's learner has published, nobody is counted: all get the default.
        users = list(map(str, sorted(set(data.events.user.tolist()))[:40]))
        deadline = time.monotonic() + 30
        while (early := _serving(client, users[0]))["arm"] is None:
            assert early["model_version"].startswith("auto-v") and early["experiment"] is None
            assert time.monotonic() < deadline, "the arm's learner never published"
            time.sleep(0.02)
        _click_first(client, early)
        seen: dict[str, set[str]] = {"default": set(), "knn": set()}
        for user in users:
            listed = _serving(client, user)
            seen[listed["arm"]].add(listed["model_version"].split("-v")[0])
            _click_first(client, listed)
        assert seen == {"default": {"auto"}, "knn": {"itemknn"}}  # each arm serves its own model

        (result,) = client.get("/experiments").json()
        by_arm = {arm["name"]: arm for arm in result["arms"]}
        # the 40 users, and the first counted request of the wait above
        assert by_arm["default"]["decisions"] + by_arm["knn"]["decisions"] == 41
        for counted in by_arm.values():  # one click each
            assert counted["positives"] == counted["decisions"] > 0
        assert by_arm["knn"]["interval"] is not None

        # the arm's learner keeps learning the log: a new user's events reach its model
        knn_user = next(f"new-{n}" for n in range(1_000)
                        if _arm_of(client, f"new-{n}") == "knn")  # fmt: skip
        item = str(data.events.item[0])
        event = {"user": knn_user, "item": item, "kind": "purchase"}
        assert client.post("/events", json=event).status_code == 200
        deadline = time.monotonic() + 5
        while _serving(client, knn_user)["fallback"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        stopped = client.post("/experiments/models/stop")
        assert stopped.status_code == 200 and stopped.json()["running"] is False
        after = client.get(f"/users/{knn_user}/recommendations").json()
        assert after["arm"] is None and after["model_version"].startswith("auto-v")
        assert (tmp_path / "events.db.snapshots" / "arms").is_dir()


def test_an_arm_with_an_unknown_model_is_refused(tmp_path):
    with TestClient(create_app(Settings(db=tmp_path / "events.db"))) as client:
        arms = [{"name": "a"}, {"name": "b", "model": "svd"}]
        answer = client.post("/experiments", json={"name": "x", "arms": arms})
        assert answer.status_code == 422
        assert "arms: b: unknown model 'svd'" in answer.json()["detail"]
        arms[1]["model"] = "mf(factors=-1)"  # parses, but no model can be made of it
        answer = client.post("/experiments", json={"name": "x", "arms": arms})
        assert answer.status_code == 422 and "arms: b: factors" in answer.json()["detail"]
        assert client.get("/experiments").json() == []


def _click_first(client: TestClient, listed: dict[str, object]) -> None:
    feedback = {"decision_id": listed["decision_id"],
                "rewards": [{"item": listed["items"][0]["item"]}]}  # fmt: skip
    assert client.post("/feedback", json=feedback).status_code == 200


def _arm_of(client: TestClient, user: str) -> str:
    return client.get(f"/users/{user}/recommendations", params={"k": 1}).json()["arm"]
