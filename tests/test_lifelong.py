"""Lifelong learning: the replay buffer, drift detection, the strategies, replay and pull."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.lifelong import (
    DriftDetector,
    Frozen,
    Incremental,
    ReplayBuffer,
    Retrain,
    parse_strategy,
)
from lifelong_rec.models import BPR, MatrixFactorization, Popularity, registered_models


def _numbered(start: int, n: int) -> EventBatch:
    rows = np.arange(start, start + n)
    return EventBatch.from_columns(rows.astype(str), (rows % 50).astype(str), 1.7e9 + rows)


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    return synthetic_stream(n_users=80, n_items=60, n_events=3_000, seed=2).events


# ------------------------------------------------------------------------------ replay buffer


def test_reservoir_is_a_uniform_sample_of_everything_added():
    buffer = ReplayBuffer(size=1_000, recent_share=0.0, seed=3)
    for start in range(0, 20_000, 700):  # batches of several sizes
        buffer.add(_numbered(start, min(700, 20_000 - start)))
    assert len(buffer) == 1_000 and buffer.seen == 20_000
    kept = buffer.sample(1_000).user.astype(int)
    assert len(np.unique(kept)) == 1_000
    # uniform over 0..19999: mean 10000, sd of the mean ~ 5774 / sqrt(1000) = 183
    assert abs(kept.mean() - 10_000) < 4 * 183
    assert np.histogram(kept, bins=4, range=(0, 20_000))[0].min() > 200


def test_recent_part_keeps_the_latest_and_samples_mix_both():
    buffer = ReplayBuffer(size=100, recent_share=0.5, seed=0)
    buffer.add(_numbered(0, 1_000))
    sample = buffer.sample(40).user.astype(int)
    assert len(sample) == 40
    assert (sample >= 950).sum() >= 20  # the 20 from the ring are all among the latest 50


def test_replay_buffer_arguments():
    with pytest.raises(ValueError, match="size must be a positive integer"):
        ReplayBuffer(size=0)
    with pytest.raises(ValueError, match="recent_share must be between 0 and 1"):
        ReplayBuffer(recent_share=1.5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        ReplayBuffer().sample(-1)
    assert len(ReplayBuffer().sample(5)) == 0


# ------------------------------------------------------------------------------ drift


def test_drift_is_detected_after_an_abrupt_change_and_not_in_noise():
    rng = np.random.default_rng(0)
    calm = DriftDetector()
    assert not any(calm.update(rng.random(500) < 0.3) for _ in range(8))
    shifted = DriftDetector()
    for _ in range(4):
        shifted.update(rng.random(500) < 0.1)
    assert any(shifted.update(rng.random(500) < 0.9) for _ in range(2))
    assert shifted.detections >= 1
    with pytest.raises(ValueError, match="delta must be between 0 and 1"):
        DriftDetector(delta=0.0)


# ------------------------------------------------------------------------------ strategies


def test_frozen_never_changes(stream):
    strategy = Frozen(Popularity)
    strategy.warm_up(stream.take(slice(0, 1_000)))
    model = strategy.model
    before = model.popularity_.counts.copy()
    strategy.end_block(stream.take(slice(1_000, 1_200)), np.zeros(10))
    assert strategy.model is model and np.array_equal(model.popularity_.counts, before)


def test_retrain_refits_on_everything_every_n_blocks(stream):
    strategy = Retrain(Popularity, every=2)
    strategy.warm_up(stream.take(slice(0, 1_000)))
    first = strategy.model
    strategy.end_block(stream.take(slice(1_000, 1_100)), np.zeros(0))
    assert strategy.model is first
    strategy.end_block(stream.take(slice(1_100, 1_200)), np.zeros(0))
    assert strategy.model is not first
    expected = Popularity().fit(stream.take(slice(0, 1_200)))
    assert np.allclose(strategy.model.popularity_.counts, expected.popularity_.counts)


def test_incremental_learns_rows_at_once_and_blocks_at_the_end(stream):
    row = Incremental(Popularity, "row", replay_size=100)
    block = Incremental(Popularity, "block", replay_size=100)
    for strategy in (row, block):
        strategy.warm_up(stream.take(slice(0, 1_000)))
    event = EventBatch.from_columns(["u-new"], ["i-new"], [stream.timestamp[999] + 1])
    row.observe(event)
    block.observe(event)
    assert "i-new" in row.model.items_ and "i-new" not in block.model.items_
    block.end_block(event, np.zeros(1))
    assert "i-new" in block.model.items_
    assert row.buffer.seen == 1_000 and block.buffer.seen == 1_001


def test_names_and_specs():
    assert parse_strategy("frozen", Popularity).name == "frozen"
    assert parse_strategy("retrain@10", Popularity).name == "retrain@10"
    assert parse_strategy("incremental@row", Popularity).name == "incremental@row"
    naive = parse_strategy("naive@block", Popularity)
    assert naive.name == "naive@block" and naive.naive


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("retrain", "retrain needs a block count"),
        ("retrain@0", "retrain needs a block count"),
        ("incremental@hour", "unknown strategy"),
        ("frozen@1", "unknown strategy"),
        ("oracle", "unknown strategy"),
    ],
)
def test_bad_strategy_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_strategy(spec, Popularity)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"cadence": "hour"}, "cadence must be one of"),
        ({"replay_size": -1}, "replay_size must be an integer >= 0"),
        ({"pull": float("inf")}, "pull must be finite"),
        ({"consolidation_passes": 1.5}, "consolidation_passes must be an integer"),
    ],
)
def test_bad_incremental_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        Incremental(Popularity, **arguments)
    with pytest.raises(TypeError, match="factory must be a callable"):
        Frozen(None)


# ------------------------------------------------------------------------------ replay, pull


@pytest.mark.parametrize("model_class", sorted(registered_models().values(), key=str))
def test_replay_refreshes_without_counting_events_again(model_class, stream):
    model = model_class(**model_class._unit_test_params()).fit(stream.take(slice(0, 1_500)))
    history = model.history_.tocsr().copy()
    popularity = model.popularity_.counts.copy()
    model.replay(stream.take(slice(0, 500)))
    model.replay(EventBatch.from_columns(["nobody"], ["nothing"], [1.7e9]))  # ignored
    assert (model.history_.tocsr() != history).nnz == 0
    assert np.array_equal(model.popularity_.counts, popularity)
    assert "nobody" not in model.users_


@pytest.mark.parametrize(("model_class", "strong"), [(MatrixFactorization, 1e6), (BPR, 1e3)])
def test_a_strong_pull_keeps_factors_near_the_anchor(model_class, strong, stream):
    def drift(strength: float) -> float:
        model = model_class(**model_class._unit_test_params()).fit(stream.take(slice(0, 1_500)))
        before = model.item_factors_.copy()
        model.anchor(strength)
        model.learn(stream.take(slice(1_500, 3_000)))
        return float(np.abs(model.item_factors_[: len(before)] - before).mean())

    assert drift(strong) < 0.2 * drift(0.0)


def test_anchor_strength_is_checked(stream):
    model = MatrixFactorization(factors=4).fit(stream.take(slice(0, 300)))
    with pytest.raises(ValueError, match="strength must be finite and >= 0"):
        model.anchor(-1.0)
