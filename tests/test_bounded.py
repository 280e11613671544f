"""Bounded memory: id admission after N sightings and expiry of idle ids (models.bounded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_service import caught_up, stream_rows, wait_until

from lifelong_rec.buffers import appended
from lifelong_rec.events import EventBatch
from lifelong_rec.models import MatrixFactorization, parse_model
from lifelong_rec.models.auto import Ensemble
from lifelong_rec.models.base import can_share_index
from lifelong_rec.models.bounded import Sightings, footprint
from lifelong_rec.service import Settings, create_app

DAY = 86_400.0


def _events(users: list[str], items: list[str], times: list[float]) -> EventBatch:
    return EventBatch.from_columns(users, items, times)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300), st.integers(2, 6))
def test_sightings_never_undercount_and_are_exact_without_collisions(ids, width_bits):
    sightings = Sightings(width_bits=width_bits)
    keys = np.array([f"id{i}" for i in ids])
    half = len(keys) // 2
    sightings.add(keys[:half], salt=0)
    estimate = sightings.add(keys[half:], salt=0)
    true = {key: ids.count(int(key[2:])) for key in keys[half:]}
    assert all(e >= true[k] for e, k in zip(estimate, keys[half:], strict=True))
    roomy = Sightings(width_bits=20)  # 2^20 counters per row for at most 41 ids
    roomy.add(keys[:half], salt=0)
    assert roomy.add(keys[half:], salt=0).tolist() == [true[k] for k in keys[half:]]


def test_sightings_saturate_and_keep_salts_apart():
    sightings = Sightings(width_bits=16)
    assert sightings.add(np.array(["x"] * 300), salt=0).max() == 255
    assert sightings.add(np.array(["x"]), salt=1).tolist() == [1]  # the same id, another kind


def test_an_id_gets_factors_only_after_admit_after_sightings():
    model = MatrixFactorization(factors=4, iterations=2, admit_after=3)
    model.fit(_events(["a", "a", "a", "b"], ["i", "j", "i", "i"], [0, 1, 2, 3]))
    assert "a" in model.users_ and "b" not in model.users_  # b seen once
    assert "j" not in model.items_  # j seen once: a's event with it was not learned
    assert model.memory_["unadmitted_events"] == 2
    cold = model.recommend(["b"], 1)  # served as a new user: the fallback's top item
    assert cold.items[0].tolist() == ["i"]
    model.learn(_events(["b"], ["i"], [4.0]))
    assert "b" not in model.users_
    model.learn(_events(["b", "c"], ["i", "i"], [5.0, 6.0]))  # b's third sighting
    assert "b" in model.users_ and "c" not in model.users_
    assert model.memory_["unadmitted_events"] == 4


def test_idle_ids_expire_and_the_rest_keep_their_scores():
    model = MatrixFactorization(factors=4, iterations=3, expire_after_days=2.0)
    model.fit(_events(["old", "new", "new"], ["x", "y", "z"], [0.0, 0.5 * DAY, 0.5 * DAY]))
    before = footprint(model)
    model.learn(_events(["new"], ["z"], [2.2 * DAY]))  # "old" and "x" idle for 2.2 days
    assert "old" not in model.users_ and "x" not in model.items_
    assert model.memory_["expired_users"] == 1 and model.memory_["expired_items"] == 1
    assert model.memory_["freed_bytes"] > 0
    assert footprint(model) == pytest.approx(before - model.memory_["freed_bytes"], abs=4096)
    assert model.item_factors_.shape == (2, 4) and model.user_factors_.shape == (1, 4)
    # the history follows the renumbering: "new" has seen y and z, nothing else
    assert sorted(model.read_history("new").tolist()) == ["y", "z"]
    # an expired user who comes back is a new user, learned again
    model.learn(_events(["old"], ["y"], [2.3 * DAY]))
    assert "old" in model.users_ and model.read_history("old").tolist() == ["y"]


def test_expiry_renumbering_matches_a_model_that_never_saw_the_idle_ids():
    """Compaction only renumbers: after expiring a user who shared nothing with the others,
    the rest score exactly as before the expiry (same factors, same Gram matrices up to the
    removed rows' part)."""
    model = MatrixFactorization(factors=4, iterations=3, expire_after_days=1.0)
    model.fit(_events(["u1", "u2", "gone"], ["a", "b", "c"], [0.5 * DAY, 0.5 * DAY, 0.0]))
    kept = model.score(["u1", "u2"], ["a", "b"])
    model._expiry_checked = -np.inf  # look again now
    model.learn(_events(["u1"], ["a"], [1.2 * DAY]))
    assert "gone" not in model.users_ and "c" not in model.items_
    user_index = model.users_.lookup(["u2"])
    item_index = model.items_.lookup(["b"])
    u2_b = model.user_factors_[user_index] @ model.item_factors_[item_index].T
    assert u2_b[0, 0] == pytest.approx(kept[1, 1], rel=1e-4)


def test_a_bounded_model_saves_and_loads_its_sightings_and_counts(tmp_path):
    model = MatrixFactorization(factors=4, iterations=2, admit_after=2, expire_after_days=5.0)
    model.fit(_events(["a", "a", "b"], ["i", "i", "i"], [0.0, 1.0, 2.0]))
    model.save(tmp_path / "m")
    loaded = MatrixFactorization.load(tmp_path / "m")
    assert loaded.memory_ == model.memory_
    for one in (model, loaded):  # b's second sighting admits it in both
        one.learn(_events(["b"], ["i"], [3.0]))
        assert "b" in one.users_
    np.testing.assert_array_equal(loaded.sightings_.counts_, model.sightings_.counts_)


def test_a_bounded_candidate_keeps_an_index_of_its_own():
    bounded = MatrixFactorization(admit_after=2)
    assert not can_share_index(bounded) and can_share_index(MatrixFactorization())
    ensemble = Ensemble(candidates=("pop", "mf(factors=4, iterations=2, admit_after=2)"))
    ensemble.fit(_events(["a", "a", "b"], ["i", "j", "i"], [0.0, 1.0, 2.0]))
    candidate = ensemble.models_[1]
    assert candidate.users_ is not ensemble.users_ and "b" not in candidate.users_
    assert "b" in ensemble.users_


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="admit_after"):
        MatrixFactorization(admit_after=0)
    with pytest.raises(ValueError, match="expire_after_days"):
        parse_model("mf(expire_after_days=0)")[1]()


def test_tables_grow_into_spare_room():
    table = np.zeros((0, 3), dtype=np.float32)
    buffers = set()
    for step in range(200):
        table = appended(table, np.full((1, 3), step, dtype=np.float32))
        buffers.add(table.base.ctypes.data)
    assert len(buffers) <= 3  # 64 rows, then 130, then 260: not one copy per append
    assert table[:, 0].tolist() == list(range(200))


def test_the_service_exports_what_a_bounded_model_holds_and_left_out(tmp_path: Path) -> None:
    spec = "mf(factors=8, iterations=3, admit_after=2)"
    settings = Settings(db=tmp_path / "events.db", publish_seconds=0.05, model=spec)
    rows = stream_rows(2_000)
    once = [row | {"user": f"visitor{n}"} for n, row in enumerate(rows[:50])]  # seen once
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json={"events": rows + once}).status_code == 200
        wait_until(lambda: caught_up(client), 30)  # a snapshot that learned every event
        gauges = {
            line.split('what="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("lifelong_rec_model_memory{")
        }
    assert gauges["unadmitted_events"] >= 50  # every one-off visitor's event at least
    assert gauges["model_bytes"] > 64 * 2**20  # the sketch's 64 MiB and the rest
    assert gauges["expired_users"] == gauges["freed_bytes"] == 0  # nothing expires here


def test_the_service_exports_the_bytes_a_compressed_model_serves(tmp_path: Path) -> None:
    """A model serving int8 tables (#17 part 3) exports the bytes its scoring reads beside
    what it holds; one serving float32 tables and bounding nothing exports neither."""
    exported = {}
    for precision in ("int8", "fp32"):
        spec = f"mf(factors=8, iterations=3, serve_precision='{precision}')"
        settings = Settings(db=tmp_path / f"{precision}.db", publish_seconds=0.05, model=spec)
        with TestClient(create_app(settings)) as client:
            assert client.post("/events", json={"events": stream_rows(500)}).status_code == 200
            wait_until(lambda: caught_up(client), 30)
            exported[precision] = {
                line.split('what="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in client.get("/metrics").text.splitlines()
                if line.startswith("lifelong_rec_model_memory{")
            }
    assert 0 < exported["int8"]["served_bytes"] < exported["int8"]["model_bytes"]
    assert exported["fp32"] == {}
