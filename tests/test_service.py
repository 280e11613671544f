"""The HTTP service, end to end: a real ``lifelong-rec serve`` process on a loopback port,
driven with a real HTTP client.

Two servers start per run: ``server`` (seeded with a small synthetic stream) for the
behaviour tests, which leave it as they found it (experiments stopped, serving unpinned), and
``fuzz_server`` for the schemathesis run, whose random writes would disturb the others.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error
from serve_process import ServeProcess

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models.explanation import Reason
from lifelong_rec.policy import policy_names
from lifelong_rec.service import Settings, create_app
from lifelong_rec.service.engine import _reason_fields
from lifelong_rec.store import EventLog

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BATCH = 3_000
MAX_BODY_BYTES = 1_000_000
MAX_K = 100
START_SECONDS = 90.0


# ------------------------------------------------------------------------------ the server

Server = ServeProcess


def start_server(folder: Path, **settings: object) -> ServeProcess:
    """``lifelong-rec serve`` with ``LIFELONG_REC_<NAME>`` settings; returns once ``/healthz``
    answers."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "LIFELONG_REC_TOKEN": TOKEN,
        "LIFELONG_REC_PUBLISH_SECONDS": "0.05",
        "LIFELONG_REC_MAX_BATCH": str(MAX_BATCH),
        "LIFELONG_REC_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "LIFELONG_REC_MAX_K": str(MAX_K),
        # Reasons are asserted on; a busy test machine must not turn them into a timeout.
        "LIFELONG_REC_EXPLAIN_SECONDS": "30",
    }
    env |= {f"LIFELONG_REC_{name.upper()}": str(value) for name, value in settings.items()}
    server = ServeProcess(folder / "events.db", env, folder / "server.log")
    server.wait_healthy(START_SECONDS)
    return server


def stream_rows(n_events: int = 6_000) -> list[dict[str, object]]:
    """The synthetic stream's events as ``POST /events`` rows."""
    return synthetic_stream(n_users=200, n_items=150, n_events=n_events, seed=0).events.to_records()


def post_stream(client: httpx.Client, rows: list[dict[str, object]], batch: int = 2_000) -> None:
    """Post ``rows`` in batches and wait until the learner has learned them all."""
    for start in range(0, len(rows), batch):
        response = client.post("/events", json={"events": rows[start : start + batch]})
        assert response.status_code == 200, response.text
    wait_until(lambda: caught_up(client), timeout=30)


def wait_until(condition: Callable[[], object], timeout: float, every: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(every)
    raise AssertionError(f"not true within {timeout} s: {condition}")


def caught_up(client: httpx.Client) -> bool:
    models = client.get("/models").json()
    return models["serving_version"] is not None and models["learner_offset"] == models["log_end"]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return stream_rows()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, object]]) -> Iterator:
    # Snapshots every 0.3 s (kept: 50) so the models test has old versions to go back to.
    running = start_server(
        tmp_path_factory.mktemp("service"), persist_seconds=0.3, keep_snapshots=50
    )
    try:
        with httpx.Client(base_url=running.url, headers=AUTH, timeout=30) as client:
            post_stream(client, rows)
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """A client with the token."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        yield http


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    """A client without a token."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def log_end(client: httpx.Client) -> int:
    return client.get("/models").json()["log_end"]


def recommend(client: httpx.Client, user: str, **params: object) -> dict[str, object]:
    response = client.get(f"/users/{user}/recommendations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------ ingestion


def test_a_batch_is_appended_once_per_idempotency_key(client: httpx.Client, server: Server) -> None:
    events = [
        {"user": "ingest-u1", "item": "i00001", "kind": "click"},
        {"user": "ingest-u1", "item": "i00002"},
    ]
    before = log_end(client)
    first = client.post("/events", json={"events": events, "key": "batch-ingest-1"})
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["accepted"], body["rejected"], body["duplicate"]) == (2, 0, False)
    assert body["first_offset"] >= before
    after = log_end(client)
    assert after >= body["first_offset"] + 2

    again = client.post("/events", json={"events": events, "key": "batch-ingest-1"})
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["first_offset"] == body["first_offset"]
    with EventLog(server.db) as log:
        appended = log.read(body["first_offset"])
    assert appended.user[:2].tolist() == ["ingest-u1", "ingest-u1"]
    assert (appended.user == "ingest-u1").sum() == 2  # the resend appended nothing


def test_rejected_rows_are_listed_and_the_rest_appended(
    client: httpx.Client, server: Server
) -> None:
    events = [
        {"user": "ingest-u2", "item": "i00003"},
        {"user": "ingest-u2", "item": "i00004", "kind": "rating"},  # a rating needs a value
        {"user": "ingest-u2", "item": "i00005", "timestamp": 1.0},  # before 1990
        {"user": "ingest-u2", "item": "i00006", "kind": "rating", "value": 4.0},
    ]
    response = client.post("/events", json={"events": events})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    reasons = {r["index"]: (r["field"], r["reason"]) for r in body["rejections"]}
    assert reasons == {1: ("value", "bad_value"), 2: ("timestamp", "timestamp_out_of_range")}
    assert all(r["detail"] for r in body["rejections"])
    with EventLog(server.db) as log:
        appended = log.read(body["first_offset"], body["first_offset"] + 2)
    assert appended.user.tolist() == ["ingest-u2", "ingest-u2"]
    assert sorted(appended.item.tolist()) == ["i00003", "i00006"]


def test_a_resent_batch_quarantines_its_rejected_rows_once(
    client: httpx.Client, server: Server
) -> None:
    events = [
        {"user": "ingest-u7", "item": "i00007"},
        {"user": "ingest-u7", "item": "i00008", "timestamp": 2.0},  # before 1990
    ]
    for _ in range(2):
        response = client.post("/events", json={"events": events, "key": "batch-ingest-7"})
        assert response.status_code == 200 and response.json()["rejected"] == 1
    with EventLog(server.db) as log:
        kept = log.rejected()
    assert sum("ingest-u7" in raw for raw in kept.raw.tolist()) == 1


def test_a_batch_with_every_row_rejected_is_422(client: httpx.Client) -> None:
    response = client.post("/events", json={"user": "ingest-u3", "item": "i1", "timestamp": 5.0})
    assert response.status_code == 422
    assert response.json()["accepted"] == 0
    assert response.json()["rejections"][0]["field"] == "timestamp"


def test_a_batch_over_the_limit_is_413(client: httpx.Client, server: Server) -> None:
    events = [{"user": "big-batch", "item": f"i{n}"} for n in range(MAX_BATCH + 1)]
    before = log_end(client)
    response = client.post("/events", json={"events": events})
    assert response.status_code == 413
    expected = f"events: {MAX_BATCH + 1} events, over the batch limit of {MAX_BATCH}"
    assert response.json()["detail"] == expected
    with EventLog(server.db) as log:
        assert "big-batch" not in log.read(before).user.tolist()


def test_a_body_over_the_limit_is_413(client: httpx.Client) -> None:
    body = json.dumps({"user": "big", "item": "i1", "kind": "view"}).replace(
        '"view"', '"view"' + " " * MAX_BODY_BYTES
    )
    response = client.post("/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert f"over the limit of {MAX_BODY_BYTES} bytes" in response.json()["detail"]


def test_a_streamed_body_over_the_limit_is_413(client: httpx.Client) -> None:
    """Without a Content-Length the limit applies to the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"user": "big", "item": "i1", "kind": "view"'
        for _ in range(MAX_BODY_BYTES // 10_000 + 1):
            yield b" " * 10_000
        yield b"}"

    response = client.post(
        "/events", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert f"over the limit of {MAX_BODY_BYTES} bytes" in response.json()["detail"]


# ------------------------------------------------------------------------------ auth


WRITES = [
    ("POST", "/events", {"user": "auth-401", "item": "i00001"}),
    ("POST", "/feedback", {"decision_id": "0" * 32, "rewards": []}),
    ("PUT", "/items/auth-401", {"title": "Auth"}),
    ("POST", "/models/latest/activate", None),
    ("POST", "/experiments", {"name": "auth-401", "arms": [{"name": "a"}, {"name": "b"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-0123"}, {"Authorization": TOKEN}],
    ids=["no token", "wrong token", "not bearer"],
)
def test_writes_need_the_token(
    anonymous: httpx.Client,
    server: Server,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str],
) -> None:
    before = log_end(anonymous)
    response = anonymous.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert "bearer token" in response.json()["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    # ... and nothing was written
    assert "auth-401" not in [e["name"] for e in anonymous.get("/experiments").json()]
    assert anonymous.get("/items/auth-401").status_code == 404
    with EventLog(server.db) as log:
        assert "auth-401" not in log.read(before).user.tolist()


def test_writes_work_with_the_token(client: httpx.Client) -> None:
    assert client.post("/events", json={"user": "auth-u", "item": "i00001"}).status_code == 200
    served = recommend(client, "u00001", k=3)
    feedback = client.post("/feedback", json={"decision_id": served["decision_id"]})
    assert feedback.status_code == 200, feedback.text
    assert client.put("/items/auth-item", json={"title": "Auth"}).status_code == 200
    assert client.post("/models/latest/activate").status_code == 200
    created = client.post(
        "/experiments", json={"name": "auth-exp", "arms": [{"name": "a"}, {"name": "b"}]}
    )
    assert created.status_code == 201, created.text
    assert client.post("/experiments/auth-exp/stop").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/metrics",
        "/models",
        "/experiments",
        "/items/i00001",
        "/items/i00001/similar",
        "/users/u00001/recommendations",
        "/openapi.json",
    ],
)
def test_reads_need_no_token(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code == 200


# ------------------------------------------------------------------------------ recommendations


def test_recommendations_are_the_models_ranking(client: httpx.Client, rows: list[dict]) -> None:
    user = rows[0]["user"]
    served = recommend(client, user, k=7)
    assert served["user"] == user
    assert served["fallback"] is False
    assert served["policy"] == "greedy"
    assert served["experiment"] is None and served["arm"] is None
    assert re.fullmatch(r"auto-v[0-9]+", served["model_version"])
    assert re.fullmatch(r"[0-9a-f]{32}", served["decision_id"])
    items = served["items"]
    assert len(items) == 7
    assert len({entry["item"] for entry in items}) == 7
    scores = [entry["score"] for entry in items]
    assert scores == sorted(scores, reverse=True)
    assert all(entry["propensity"] == 1.0 and not entry["exploring"] for entry in items)
    assert all(entry["reasons"] is None for entry in items)
    assert recommend(client, user, k=7)["decision_id"] != served["decision_id"]


def test_explain_gives_reasons_with_text(client: httpx.Client, rows: list[dict]) -> None:
    served = recommend(client, rows[0]["user"], k=4, explain=True)
    assert served["method"]
    assert len(served["items"]) == 4
    for entry in served["items"]:
        assert entry["reasons"], entry
        for reason in entry["reasons"]:
            assert reason["text"].strip()
            assert math.isfinite(reason["weight"])


def test_an_unknown_user_gets_the_fallback(client: httpx.Client) -> None:
    served = recommend(client, "never-seen-user", k=6)
    assert served["fallback"] is True
    assert len(served["items"]) == 6
    assert re.fullmatch(r"[0-9a-f]{32}", served["decision_id"])


def test_reads_without_the_token_are_logged_within_a_budget(
    client: httpx.Client, anonymous: httpx.Client
) -> None:
    # Issue #13: anonymous reads grew the log without limit (1.6 M impressions in 20 s).
    # Defaults: 10 logged reads a second per client address, bursts of 100.
    started = time.monotonic()
    ids = [anonymous.get(f"/users/u{n % 200:05d}/recommendations").json()["decision_id"]
           for n in range(300)]  # fmt: skip
    refilled = 10 * (time.monotonic() - started)  # what the bucket regained meanwhile
    logged = sum(i is not None for i in ids)
    assert 100 <= logged <= 100 + refilled + 1 and logged < 300, (logged, refilled)
    assert all(recommend(client, "u00003")["decision_id"] for _ in range(20))  # the token's


def test_k_over_max_k_is_refused_not_cut(client: httpx.Client) -> None:
    # Issue #13: the route allowed k up to 1000 and cut it silently at max_k.
    assert len(recommend(client, "u00001", k=MAX_K)["items"]) == MAX_K
    for path in ("/users/u00001/recommendations", "/items/i00001/similar"):
        refused = client.get(path, params={"k": MAX_K + 1})
        assert refused.status_code == 422, refused.text
        assert f"between 1 and {MAX_K}" in refused.json()["detail"]


def test_a_new_users_events_are_served_within_a_second(
    client: httpx.Client, rows: list[dict]
) -> None:
    wait_until(lambda: caught_up(client), timeout=10)
    user = "fresh-user-1"
    assert recommend(client, user)["fallback"] is True
    started = time.monotonic()
    events = [{"user": user, "item": row["item"], "kind": "click"} for row in rows[:3]]
    assert client.post("/events", json={"events": events}).status_code == 200
    wait_until(lambda: not recommend(client, user, k=5)["fallback"], timeout=5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"a new user waited {elapsed:.2f} s for recommendations"


# ------------------------------------------------------------------------------ feedback


def test_feedback_rewards_by_position_once(client: httpx.Client, server: Server) -> None:
    served = recommend(client, "u00002", k=5)
    slate = [entry["item"] for entry in served["items"]]
    decision = served["decision_id"]

    outsider = client.post(
        "/feedback", json={"decision_id": decision, "rewards": [{"item": "not-shown-item"}]}
    )
    assert outsider.status_code == 422
    assert "not-shown-item" in outsider.json()["detail"]

    response = client.post(
        "/feedback",
        json={"decision_id": decision, "rewards": [{"item": slate[1], "kind": "purchase"}]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["decision_id"] == decision
    assert body["rewards"] == [0.0, 1.0, 0.0, 0.0, 0.0]

    with EventLog(server.db) as log:
        reward = log.read(body["first_offset"], body["first_offset"] + 1)
    assert reward.user.tolist() == ["u00002"]
    assert reward.item.tolist() == [slate[1]]
    assert reward.kind_names.tolist() == ["purchase"]
    assert reward.policy.tolist() == ["greedy"]
    assert reward.model_version.tolist() == [served["model_version"]]
    assert reward.propensity.tolist() == [1.0]

    again = client.post("/feedback", json={"decision_id": decision, "rewards": []})
    assert again.status_code == 409
    assert decision in again.json()["detail"]


def test_feedback_rewards_each_kind(client: httpx.Client) -> None:
    # By the default reward preset, "ecommerce": click 0.1 < cart 0.3 < purchase 1, a rating
    # over 5, watch time worth nothing (issue #13: the service used click 1.0 where the
    # library's rewards said 0.1).
    served = recommend(client, "u00005", k=5)
    slate = [entry["item"] for entry in served["items"]]
    rewards = [
        {"item": slate[0], "kind": "purchase"},
        {"item": slate[1], "kind": "cart"},
        {"item": slate[2], "kind": "watch", "value": 300.0},
        {"item": slate[3], "kind": "rating", "value": 4.0},  # of 5
        {"item": slate[4], "kind": "click"},
    ]
    response = client.post(
        "/feedback", json={"decision_id": served["decision_id"], "rewards": rewards}
    )
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == pytest.approx([1.0, 0.3, 0.0, 0.8, 0.1])


def test_feedback_for_an_unknown_decision_is_404(client: httpx.Client) -> None:
    response = client.post("/feedback", json={"decision_id": "f" * 32, "rewards": []})
    assert response.status_code == 404
    assert "f" * 32 in response.json()["detail"]


# ------------------------------------------------------------------------------ items


def test_an_item_put_is_read_back(client: httpx.Client) -> None:
    item = {"title": "The Red Kettle", "text": "A kettle, red.", "categories": ["Kitchen", "Red"]}
    put = client.put("/items/i00007", json=item)
    assert put.status_code == 200, put.text
    got = client.get("/items/i00007")
    assert got.status_code == 200
    assert got.json() == {"item": "i00007", **item, "recommendable": True}

    fresh = client.put("/items/catalogue-only", json={"title": "New"}).json()
    assert fresh["recommendable"] is True  # auto ranks never-seen catalogue items too
    assert client.get("/items/catalogue-only").json()["title"] == "New"


def test_an_unknown_item_is_404(client: httpx.Client) -> None:
    response = client.get("/items/no-such-item")
    assert response.status_code == 404
    assert "no-such-item" in response.json()["detail"]
    assert client.get("/items/no-such-item/similar").status_code == 404


def test_similar_items_exclude_the_item(client: httpx.Client) -> None:
    response = client.get("/items/i00007/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    names = [entry["item"] for entry in body["items"]]
    assert len(names) == 5 == len(set(names))
    assert "i00007" not in names
    scores = [entry["score"] for entry in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert re.fullmatch(r"auto-v[0-9]+", body["model_version"])


# ------------------------------------------------------------------------------ models


def test_activate_pins_serving_and_latest_unpins(client: httpx.Client, rows: list[dict]) -> None:
    def two_snapshots() -> list[dict] | None:
        client.post("/events", json={"user": "models-u", "item": rows[0]["item"]})
        snapshots = client.get("/models").json()["snapshots"]
        return snapshots if len(snapshots) >= 2 else None

    snapshots = wait_until(two_snapshots, timeout=10, every=0.2)
    models = client.get("/models").json()
    assert models["pinned"] is False
    assert models["serving_version"] is not None
    older = snapshots[0]["version"]
    assert older < snapshots[-1]["version"]
    try:
        pinned = client.post(f"/models/{older}/activate")
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned"] is True
        assert pinned.json()["serving_version"] == f"auto-v{older}"
        assert recommend(client, "u00003")["model_version"] == f"auto-v{older}"
        # The learner goes on learning; serving stays where it was put.
        client.post("/events", json={"user": "models-u", "item": rows[1]["item"]})
        time.sleep(0.3)
        assert recommend(client, "u00003")["model_version"] == f"auto-v{older}"
        listed = {s["version"]: s["serving"] for s in client.get("/models").json()["snapshots"]}
        assert listed[older] is True
    finally:
        unpinned = client.post("/models/latest/activate")
    assert unpinned.status_code == 200
    assert unpinned.json()["pinned"] is False
    newest = int(unpinned.json()["serving_version"].removeprefix("auto-v"))
    assert newest > older
    # serving follows the learner again (which may have published more meanwhile)
    assert int(recommend(client, "u00003")["model_version"].removeprefix("auto-v")) >= newest


def test_activating_a_missing_version_is_404(client: httpx.Client) -> None:
    response = client.post("/models/999999/activate")
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]
    assert client.get("/models").json()["pinned"] is False


def test_activating_a_bad_version_is_422(client: httpx.Client) -> None:
    response = client.post("/models/v1/activate")
    assert response.status_code == 422
    assert "version" in response.json()["detail"]


# ------------------------------------------------------------------------------ experiments


EXPERIMENT = {
    "name": "ab-1",
    "arms": [
        {"name": "control", "policy": "greedy"},
        {"name": "explore", "policy": "epsilon(epsilon=0.5)"},
    ],
}


def test_an_experiment_splits_users_and_reports_per_arm(client: httpx.Client) -> None:
    bad = client.post(
        "/experiments",
        json={
            "name": "ab-bad",
            "arms": [{"name": "control"}, {"name": "broken", "policy": "nonsense(x=1)"}],
        },
    )
    assert bad.status_code == 422
    assert "broken" in bad.json()["detail"]

    created = client.post("/experiments", json=EXPERIMENT)
    assert created.status_code == 201, created.text
    try:
        body = created.json()
        assert body["name"] == "ab-1" and body["running"] is True and body["stopped_at"] is None
        assert [arm["name"] for arm in body["arms"]] == ["control", "explore"]
        assert [arm["decisions"] for arm in body["arms"]] == [0, 0]

        second = client.post("/experiments", json=EXPERIMENT | {"name": "ab-2"})
        assert second.status_code == 409
        assert "ab-1" in second.json()["detail"]

        k, users = 5, [f"u{n:05d}" for n in range(40)]
        arms: dict[str, str] = {}
        for user in users:
            first, again = recommend(client, user, k=k), recommend(client, user, k=k)
            assert first["experiment"] == again["experiment"] == "ab-1"
            assert first["arm"] == again["arm"], "a user changed arms"
            assert first["policy"] == ("greedy" if first["arm"] == "control" else "epsilon")
            assert len(first["items"]) == k
            arms[user] = first["arm"]
            # control users click one item, explore users two: rates 1/5 and 2/5
            clicked = first["items"][: 1 if first["arm"] == "control" else 2]
            feedback = client.post(
                "/feedback",
                json={
                    "decision_id": first["decision_id"],
                    "rewards": [{"item": e["item"]} for e in clicked],
                },
            )
            assert feedback.status_code == 200, feedback.text
        per_arm = {
            name: sum(arm == name for arm in arms.values()) for name in ("control", "explore")
        }
        assert min(per_arm.values()) >= 5, per_arm

        (listed,) = [e for e in client.get("/experiments").json() if e["name"] == "ab-1"]
        control, explore = listed["arms"]
        for arm, clicks in ((control, 1), (explore, 2)):
            users_in_arm = per_arm[arm["name"]]
            assert arm["decisions"] == 2 * users_in_arm
            assert arm["impressions"] == k * users_in_arm
            assert arm["positives"] == clicks * users_in_arm
            assert arm["rate"] == pytest.approx(clicks / k)
        assert control["difference"] is None
        assert explore["difference"] == pytest.approx(1 / k)
        low, high = explore["interval"]
        assert low < explore["difference"] < high
        assert 0.0 <= explore["p_value"] <= 1.0
    finally:
        stopped = client.post("/experiments/ab-1/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["running"] is False
    assert stopped.json()["stopped_at"] is not None
    assert recommend(client, "u00001")["experiment"] is None
    assert client.post("/experiments/ab-1/stop").status_code == 404
    reused = client.post("/experiments", json=EXPERIMENT)
    assert reused.status_code == 422
    assert "ab-1" in reused.json()["detail"]


def test_weights_split_users_in_proportion(client: httpx.Client) -> None:
    arms = [{"name": "small", "weight": 1}, {"name": "large", "weight": 3}]
    assert client.post("/experiments", json={"name": "weights", "arms": arms}).status_code == 201
    try:
        served = [recommend(client, f"weights-user-{n}", k=1)["arm"] for n in range(200)]
    finally:
        client.post("/experiments/weights/stop")
    # a binomial(200, 0.75) lies in [130, 170] with probability > 0.99; the hash is fixed
    assert 130 <= served.count("large") <= 170, served.count("large")


def test_every_policy_serves_and_learns_in_an_experiment(client: httpx.Client) -> None:
    """Each registered policy, as an arm: slates of k distinct items with propensities in
    (0, 1], and feedback it learns from."""
    arms = [{"name": name, "policy": name} for name in policy_names()]
    created = client.post("/experiments", json={"name": "every-policy", "arms": arms})
    assert created.status_code == 201, created.text
    try:
        seen = set()
        for n in range(60):
            served = recommend(client, f"u{n:05d}", k=4, explain=n % 2 == 0)
            seen.add(served["arm"])
            items = served["items"]
            assert len({entry["item"] for entry in items}) == len(items) == 4, served
            assert all(0.0 < entry["propensity"] <= 1.0 for entry in items), served
            rewards = [{"item": items[n % 4]["item"], "kind": "rating", "value": 4.0}]
            feedback = client.post(
                "/feedback", json={"decision_id": served["decision_id"], "rewards": rewards}
            )
            assert feedback.status_code == 200, (served["arm"], feedback.text)
            assert feedback.json()["rewards"][n % 4] == pytest.approx(0.8)
    finally:
        client.post("/experiments/every-policy/stop")
    assert seen == set(policy_names())


def test_concurrent_creates_start_one_experiment(server: Server) -> None:
    """Guards a race: two POST /experiments at once both passed the "another is running"
    check, and both answered 201."""
    arms = [{"name": "a"}, {"name": "b"}]
    names = [f"race-{n}" for n in range(8)]

    def create(name: str) -> int:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
            return http.post("/experiments", json={"name": name, "arms": arms}).status_code

    with ThreadPoolExecutor(len(names)) as pool:
        codes = list(pool.map(create, names))
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        running = [e["name"] for e in http.get("/experiments").json() if e["running"]]
        for name in running:
            http.post(f"/experiments/{name}/stop")
    assert sorted(codes) == [201] + [409] * 7, codes
    assert running == [names[codes.index(201)]]


def test_concurrent_retries_of_a_batch_append_it_once(server: Server) -> None:
    events = [{"user": "retry-user", "item": f"i{n:05d}"} for n in range(5)]

    def send(_: int) -> dict:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
            response = http.post("/events", json={"events": events, "key": "retried-batch"})
            assert response.status_code == 200, response.text
            return response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))
    assert sorted(answer["duplicate"] for answer in answers) == [False] + [True] * 7
    assert len({answer["first_offset"] for answer in answers}) == 1
    with EventLog(server.db) as log:
        assert (log.read(answers[0]["first_offset"]).user == "retry-user").sum() == 5


# ------------------------------------------------------------------------------ metrics, health


def _rewards_total(client: httpx.Client) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "lifelong_rec_reward_total"
    )


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    served = recommend(client, "u00004", k=3)
    rewarded = _rewards_total(client)  # earlier tests of the module may have given some
    client.post(
        "/feedback",
        json={
            "decision_id": served["decision_id"],
            "rewards": [{"item": served["items"][0]["item"]}],
        },
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    requests = {
        dict(labels)["route"]: value
        for (name, labels), value in samples.items()
        if name == "lifelong_rec_requests_total"
    }
    assert requests["/users/{user_id}/recommendations"] >= 1
    assert requests["/feedback"] >= 1
    assert not any("u00004" in route for route in requests), "a route label holds a path"
    assert "lifelong_rec_request_seconds_bucket" in names
    assert "lifelong_rec_request_seconds_count" in names
    assert samples[("lifelong_rec_events_ingested_total", ())] >= 6_000
    assert samples[("lifelong_rec_learner_lag_events", ())] >= 0
    assert samples[("lifelong_rec_model_version", ())] >= 1
    rewards = [v for (name, _), v in samples.items() if name == "lifelong_rec_reward_total"]
    assert sum(rewards) > rewarded  # this test's click counted


def test_health_and_readiness(anonymous: httpx.Client) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert re.fullmatch(r"auto-v[0-9]+", ready.json()["model_version"])


def test_no_cors_headers_by_default(anonymous: httpx.Client) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    response = anonymous.get("/users/u00001/recommendations", headers=origin)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = anonymous.options(
        "/events", headers=origin | {"Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


# ------------------------------------------------------------------------------ bad input


def post(path: str, body: str | None = None) -> tuple[str, str, str | None]:
    return ("POST", path, body)


def event(fields: str) -> tuple[str, str, str]:
    """``POST /events`` of one event with user "u", item "i" and ``fields``."""
    return post("/events", '{"user": "u", "item": "i"' + fields + "}")


def reward(fields: str) -> tuple[str, str, str]:
    """``POST /feedback`` of a well-formed decision id with one reward of ``fields``."""
    return post("/feedback", '{"decision_id": "' + "ab" * 16 + '", "rewards": [{' + fields + "}]}")


def get(path: str) -> tuple[str, str, None]:
    return ("GET", path, None)


def arms(second: str, name: str = "e") -> tuple[str, str, str]:
    """``POST /experiments`` with an arm "a" and a second arm ``second``."""
    return post("/experiments", f'{{"name": "{name}", "arms": [{{"name": "a"}}, {second}]}}')


RECOMMEND = "/users/u00001/recommendations"

# (request, status, pattern of the message); the request is (method, path, raw JSON body)
BAD_REQUESTS = [
    # Row problems are rejections (issue #13: one contract with files), named in the body.
    (post("/events", '{"user": 5, "item": "i"}'), 422, r'"user", "reason": "invalid_id"'),
    (post("/events", '{"item": "i"}'), 422, r'"user", "reason": "missing_id"'),
    (post("/events", '{"user": "", "item": "i"}'), 422, r'"user", "reason": "missing_id"'),
    (
        post("/events", '{"user": "u", "item": "%s"}' % ("i" * 257)),
        422,
        r'"item", "reason": "id_too_long"',
    ),
    (post("/events", '{"user": "u\\u0007", "item": "i"}'), 422, r'"invalid_id", .*U\+0007'),
    (post("/events", '{"user": "u\\u007f", "item": "i"}'), 422, r'"invalid_id", .*U\+007F'),
    (post("/events", '{"user": "u\\u200b", "item": "i"}'), 422, r'"invalid_id", .*U\+200B'),
    (post("/events", '{"user": "u\\ufffd", "item": "i"}'), 422, r'"invalid_id", .*U\+FFFD'),
    (event(', "kind": "hug"'), 422, r'"unknown_kind"'),
    (event(', "value": NaN'), 422, r'"value", "reason": "bad_value", .*finite number'),
    (event(', "value": Infinity'), 422, r'"value", "reason": "bad_value", .*finite number'),
    (event(', "value": -Infinity'), 422, r'"value", "reason": "bad_value", .*finite number'),
    (event(', "value": "x"'), 422, r'"value", "reason": "bad_value"'),
    (event(', "timestamp": -1'), 422, r'"timestamp_out_of_range", .*before min_time'),
    (event(', "timestamp": 1e30'), 422, r"more than a day in the future"),
    (event(', "timestamp": 1.0'), 422, r'"field": "timestamp", .*before min_time'),  # cleaning
    (event(', "colour": "red"'), 422, r'"colour", "reason": "malformed_row"'),
    (event(', "context": {"a b": 1}'), 422, r'"context.a b", "reason": "bad_context"'),
    (event(', "context": {"x": "y"}'), 422, r'"context.x", "reason": "bad_context"'),
    (event(', "context": {"x": 1e999}'), 422, r'"context.x", "reason": "bad_context"'),
    # A context feature named like a column overwrote the column (a forged propensity, user).
    (event(', "context": {"propensity": 1}'), 422, r"context\.propensity.*event column"),
    (event(', "context": {"user": 1}'), 422, r"context\.user.*event column"),
    (
        post("/events", '{"user": "u", "item": "i"'),
        422,
        r"^body: invalid JSON at character 25: Expecting ','",
    ),
    (post("/events", ""), 422, r'^body: an event, or \{"events": \[...\]\}, is required'),
    (post("/events", "[]"), 422, r"^body: .*not a JSON array"),
    (post("/events", '{"events": []}'), 422, r"^events: at least one event"),
    (post("/events", '{"events": [{"user": "u"}]}'), 422, r'"index": 0, "field": "item", "reason"'),
    (
        post("/events", '{"events": [{"user": "u", "item": "i"}], "key": ""}'),
        422,
        r"^key: .*at least",
    ),
    (get(RECOMMEND + "?k=0"), 422, r"query\.k: .*greater than or equal to 1"),
    (get(RECOMMEND + "?k=100000"), 422, r"^k: must be between 1 and 100"),
    (get(RECOMMEND + "?k=ten"), 422, r"query\.k: .*valid integer"),
    (get(RECOMMEND + "?explain=perhaps"), 422, r"query\.explain: .*valid boolean"),
    (get("/users/a%0Ab/recommendations"), 422, r"path\.user_id: .*pattern"),
    (get("/users/" + "u" * 257 + "/recommendations"), 422, r"path\.user_id: .*at most 256"),
    (get("/items/i00001/similar?k=0"), 422, r"query\.k: .*greater than or equal to 1"),
    (("PUT", "/items/a%00b", "{}"), 422, r"path\.item_id: .*pattern"),
    (("PUT", "/items/x", '{"title": 5}'), 422, r"body\.title: .*valid string"),
    (("PUT", "/items/x", '{"categories": "Toys"}'), 422, r"body\.categories: .*valid list"),
    (("PUT", "/items/x", '{"price": 3}'), 422, r"body\.price: Extra inputs"),
    (post("/feedback", '{"decision_id": "xyz"}'), 422, r"body\.decision_id: .*pattern"),
    (post("/feedback", '{"decision_id": "%s"}' % ("AB" * 16)), 422, r"decision_id: .*pattern"),
    (post("/feedback", '{"rewards": []}'), 422, r"body\.decision_id: Field required"),
    (reward('"item": "i", "kind": "view"'), 422, r"rewards\.0\.kind: Input should be 'click'"),
    (reward('"item": "i", "value": -1'), 422, r"rewards\.0\.value: .*greater than or equal to 0"),
    (reward('"item": "i", "value": NaN'), 422, r"rewards\.0\.value: .*finite number"),
    (reward('"item": ""'), 422, r"rewards\.0\.item: .*at least 1 char"),
    # Two rewards of one item were summed past 1, and Thompson sampling failed on them.
    (
        reward('"item": "i"}, {"item": "i", "kind": "purchase"'),
        422,
        r"rewards: .*'i' is named twice",
    ),
    (arms('{"name": "a"}'), 422, r"^arms: arm names must be distinct"),
    (arms('{"name": "b", "weight": 0}'), 422, r"arms\.1\.weight: .*greater than 0"),
    (arms('{"name": "b", "weight": -2}'), 422, r"arms\.1\.weight: .*greater than 0"),
    (arms('{"name": "b", "policy": ""}'), 422, r"arms\.1\.policy: .*at least 1 char"),
    (arms('{"name": "b"}', name="e e"), 422, r"body\.name: .*pattern"),
    (arms('{"name": "b"}', name=".."), 422, r"body\.name: .*dots only"),  # /experiments/../stop
    (post("/experiments", '{"name": "e", "arms": [{"name": "a"}]}'), 422, r"arms: .*at least 2"),
    (post("/experiments/" + "n" * 65 + "/stop"), 422, r"path\.name: .*at most 64"),
    (post("/experiments/not-running/stop"), 404, r"experiment 'not-running' is not running"),
    (post("/models/-1/activate"), 422, r"path\.version: .*pattern"),
]


@pytest.mark.parametrize(
    ("request_", "status", "pattern"),
    BAD_REQUESTS,
    ids=[f"{m} {p[:40]} {(b or '')[:60]}" for (m, p, b), _, _ in BAD_REQUESTS],
)
def test_bad_input_is_a_4xx_naming_the_field(
    client: httpx.Client, request_: tuple[str, str, str | None], status: int, pattern: str
) -> None:
    method, path, body = request_
    headers = {"Content-Type": "application/json"} if body is not None else {}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    # a row that cleaning rejects is listed in "rejections" (test_rejected_rows_...)
    message = body["detail"] if "detail" in body else json.dumps(body["rejections"])
    assert re.search(pattern, message), message


def test_bad_input_table_is_broad() -> None:
    assert len(BAD_REQUESTS) >= 15


# ------------------------------------------------------------------------------ fuzzing

# The cases are generated from the app's OpenAPI document, which exists before any server
# (building the app opens nothing); ``fuzz_server`` checks that the live server's
# /openapi.json is this same document. (schemathesis.pytest.from_fixture, the lazy way to
# load the live one, reads ``Function._nodeid``, which pytest 9 no longer has.)
OPENAPI = create_app(Settings(db=Path("never-opened.db"), token=TOKEN)).openapi()
fuzzed = schemathesis.openapi.from_dict(OPENAPI)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> Iterator[Server]:
    """A server of its own: the fuzzer's writes (experiments, pinned models) would change
    what the other tests see."""
    running = start_server(tmp_path_factory.mktemp("fuzz"))
    try:
        with httpx.Client(base_url=running.url, headers=AUTH, timeout=30) as http:
            assert http.get("/openapi.json").json() == OPENAPI
            post_stream(http, rows[:2_000])
        yield running
    finally:
        running.stop()


@fuzzed.parametrize()
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_request_is_a_server_error(case: schemathesis.Case, fuzz_server: Server) -> None:
    case.call_and_validate(base_url=fuzz_server.url, headers=AUTH, checks=[not_a_server_error])


def test_a_reason_is_served_with_every_field_of_its_dataclass():
    for reason in (
        Reason("history", 0.5, "Because you watched X", "x"),
        Reason("popularity", 1, "t"),
    ):
        assert _reason_fields(reason) == asdict(reason)
