"""P4: the simulated world, its click model and oracle, the A/B harness, and its statistics."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lifelong_rec.evaluate.simulate import (
    OraclePolicy,
    Simulator,
    SimulatorConfig,
    ab_test,
    assign_arms,
    bootstrap_over_users,
    simulate_report,
    stable_hash,
    standardised_scores,
    two_proportion_test,
)
from lifelong_rec.policy import Greedy

# A small world: tests run in seconds.
SMALL = SimulatorConfig(n_users=200, n_items_initial=30, users_per_round=20, item_arrival_rate=0.5)
STATIC = dataclasses.replace(
    SMALL, taste_drift=0.0, topic_switch_rate=0.0, item_arrival_rate=0.0,
    item_lifetime=math.inf, item_half_life=math.inf,
)  # fmt: skip


def _run(world: Simulator, rounds: int) -> list[tuple]:
    """Arrivals, candidates, random slates and their clicks for some rounds."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(rounds):
        users, items = world.arrivals(), world.live_items()
        slates = np.stack([rng.choice(items, 3, replace=False) for _ in users])
        out.append((users, items, world.clicks(users, slates), world.taste_.copy()))
        world.step()
    return out


# ------------------------------------------------------------------------------ the world


def test_the_world_is_deterministic_for_a_seed():
    first, second = _run(Simulator(SMALL, seed=3), 15), _run(Simulator(SMALL, seed=3), 15)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    other = _run(Simulator(SMALL, seed=4), 15)
    assert not np.array_equal(first[0][0], other[0][0])


def test_the_world_does_not_depend_on_what_is_shown():
    # Clicks have their own generator: whatever the policies show, the same users arrive
    # into the same drifting world.
    a, b = Simulator(SMALL, seed=1), Simulator(SMALL, seed=1)
    for _ in range(10):
        users_a, users_b = a.arrivals(), b.arrivals()
        np.testing.assert_array_equal(users_a, users_b)
        a.clicks(users_a, a.oracle_slates(users_a, a.live_items()))  # b shows nothing
        a.step()
        b.step()
    np.testing.assert_array_equal(a.taste_, b.taste_)
    np.testing.assert_array_equal(a.item_birth_, b.item_birth_)


def test_click_frequencies_follow_the_position_based_model():
    world = Simulator(STATIC, seed=0)
    items = world.oracle_slates(np.array([0]), world.live_items())[0]
    n = 30_000
    users = np.zeros(n, dtype=np.int64)
    # The same three items, each on every position equally often.
    rotations = np.array([np.roll(items, shift) for shift in range(3)])
    slates = rotations[np.arange(n) % 3]
    clicks = world.clicks(users, slates)
    expected = world.click_probabilities(users, slates)
    attraction = world.attraction(np.array([0]), items)[0]
    rates = np.zeros((3, 3))  # [item, position]
    for item in range(3):
        for position in range(3):
            shown = slates[:, position] == items[item]
            rates[item, position] = clicks[shown, position].mean()
            p = expected[shown, position][0]
            assert p == pytest.approx(STATIC.position_bias[position] * attraction[item])
            tolerance = 4.5 * math.sqrt(p * (1 - p) / shown.sum())  # fixed seed, 4.5 SE
            assert abs(rates[item, position] - p) < tolerance
    # Position bias: the same item is clicked more on position 1 than on position 3.
    assert (rates[:, 0] > rates[:, 2]).all()
    ratio = rates[:, 0].sum() / rates[:, 2].sum()
    assert ratio == pytest.approx(1.0 / 0.4, rel=0.15)


def test_the_oracle_slate_is_the_best_of_all_slates():
    world = Simulator(SMALL, seed=2)
    users = world.arrivals()[:4]
    candidates = world.live_items()[:6]
    oracle = world.oracle_slates(users, candidates)
    best = world.expected_reward(users, oracle)
    every = np.array(list(itertools.permutations(candidates, 3)))  # all 120 slates
    for row, user in enumerate(users):
        rewards = world.expected_reward(np.full(len(every), user), every)
        assert best[row] == pytest.approx(rewards.max())
        assert (best[row] >= rewards - 1e-12).all()
    attraction = world.click_probabilities(users, oracle) / np.array(SMALL.position_bias)
    assert (np.diff(attraction, axis=1) <= 0).all()  # most attractive first


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bias=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    steps=st.integers(0, 5),
)
def test_no_slate_beats_the_oracle(seed, bias, steps):
    config = dataclasses.replace(SMALL, position_bias=tuple(sorted(bias, reverse=True)))
    world = Simulator(config, seed=seed)
    for _ in range(steps):
        world.step()
    users, candidates = world.arrivals(), world.live_items()
    rng = np.random.default_rng(seed)
    slates = np.stack([rng.choice(candidates, 3, replace=False) for _ in range(200)])
    rows = np.repeat(users, 10)
    best = world.expected_reward(rows, world.oracle_slates(rows, candidates))
    assert (best >= world.expected_reward(rows, slates) - 1e-12).all()


def test_tastes_drift_items_arrive_fade_and_retire():
    config = dataclasses.replace(
        SMALL, item_arrival_rate=0.2, item_lifetime=50.0, item_half_life=20.0
    )
    world = Simulator(config, seed=0)
    taste = world.taste_.copy()
    initial = world.n_items
    for _ in range(500):
        world.step()
    assert np.linalg.norm(world.taste_ - taste, axis=1).mean() > 0.1
    assert abs((world.n_items - initial) - 100) < 4 * math.sqrt(100)  # Poisson(0.2 * 500)
    age = world.round_ - world.item_birth_[world.live_items()]
    assert age.max() < 50 and len(world.live_items()) < world.n_items

    still = Simulator(dataclasses.replace(STATIC, item_half_life=20.0), seed=0)
    users, items = np.arange(5), still.live_items()
    before = still.attraction(users, items)
    for _ in range(20):
        still.step()
    np.testing.assert_array_equal(still.taste_, Simulator(STATIC, seed=0).taste_)
    np.testing.assert_allclose(still.attraction(users, items), 0.5 * before)


def test_features_are_views_of_the_truth():
    world = Simulator(dataclasses.replace(SMALL, user_feature_noise=0.0), seed=0)
    users, items = np.arange(4), world.live_items()
    np.testing.assert_array_equal(world.user_features(users), world.taste_[users])
    topics = world.item_features(items)
    assert topics.shape == (len(items), SMALL.n_topics)
    np.testing.assert_array_equal(topics.argmax(axis=1), world.item_topics_[items])
    bare = Simulator(dataclasses.replace(SMALL, user_features="none", item_features="none"))
    assert bare.user_features(users).shape == (4, 0)
    assert bare.item_features(items).shape == (len(items), 0)
    vectors = Simulator(dataclasses.replace(SMALL, item_features="vector")).item_features(items)
    assert vectors.shape == (len(items), SMALL.dim)


def test_ids_round_trip_and_foreign_ids_are_refused():
    world = Simulator(SMALL, seed=0)
    np.testing.assert_array_equal(world.user_indexes(world.user_ids(np.arange(5))), np.arange(5))
    np.testing.assert_array_equal(world.item_indexes(["i0", "i29"]), [0, 29])
    for bad in ("uu5", "u05", "x1", "u", "u200", "u-1"):
        with pytest.raises(ValueError, match="users"):
            world.user_indexes([bad])


BAD_CONFIGS = [
    ({"n_users": 0}, "n_users"),
    ({"n_topics": 1.5}, "n_topics"),
    ({"k": True}, "k"),
    ({"dim": -2}, "dim"),
    ({"taste_drift": -0.1}, "taste_drift"),
    ({"taste_drift": math.inf}, "taste_drift"),
    ({"click_scale": "3"}, "click_scale"),
    ({"click_bias": math.nan}, "click_bias"),
    ({"taste_reversion": 1.5}, "taste_reversion"),
    ({"topic_switch_rate": -0.01}, "topic_switch_rate"),
    ({"item_arrival_rate": -1.0}, "item_arrival_rate"),
    ({"item_lifetime": 0.0}, "item_lifetime"),
    ({"item_half_life": math.nan}, "item_half_life"),
    ({"position_bias": (1.0, 0.5)}, "position_bias"),
    ({"position_bias": (0.4, 0.6, 1.0)}, "position_bias"),
    ({"position_bias": (1.2, 0.6, 0.4)}, "position_bias"),
    ({"position_bias": (1.0, 0.6, 0.0)}, "position_bias"),
    ({"position_bias": ("high", "mid", "low")}, "position_bias"),
    ({"n_items_initial": 2}, "n_items_initial"),
    ({"users_per_round": 500}, "users_per_round"),
    ({"user_features": "exact"}, "user_features"),
    ({"item_features": "text"}, "item_features"),
    ({"user_feature_noise": -1.0}, "user_feature_noise"),
]


@pytest.mark.parametrize(("change", "field"), BAD_CONFIGS)
def test_bad_configs_raise_naming_the_field(change, field):
    with pytest.raises(ValueError, match=rf"SimulatorConfig\.{field} "):
        dataclasses.replace(SMALL, **change)


def test_bad_simulator_inputs():
    with pytest.raises(TypeError, match="config"):
        Simulator({"n_users": 3})
    with pytest.raises(ValueError, match="seed"):
        Simulator(SMALL, seed=-1)
    world = Simulator(SMALL)
    with pytest.raises(ValueError, match="slates"):
        world.clicks(np.arange(2), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="slates"):
        world.clicks(np.arange(1), np.array([[0, 1, 999]]))
    with pytest.raises(ValueError, match="candidates"):
        world.oracle_slates(np.arange(2), np.arange(2))


# ------------------------------------------------------------------------------ assignment


def _fnv_splitmix(text: str, salt: int) -> int:
    """The reference: FNV-1a 64 over the UTF-8 bytes, then splitmix64 with the salt."""
    mask = 2**64 - 1
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & mask
    h = (h + salt * 0x9E3779B97F4A7C15) & mask
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


def test_the_hash_is_stable_and_independent_of_the_batch():
    ids = ["u1", "u10", "", "ü-nicode", "a much longer user id 12345"]
    for salt in (0, 7):
        expected = [_fnv_splitmix(text, salt) for text in ids]
        assert stable_hash(ids, salt).tolist() == expected
    arms = assign_arms(ids, 3)
    # An id's arm does not depend on the other ids of the batch.
    assert [int(assign_arms([text], 3)[0]) for text in ids] == arms.tolist()


def test_assignment_is_balanced_and_the_salt_reshuffles():
    users = Simulator.user_ids(np.arange(20_000))
    arms = assign_arms(users, 4)
    counts = np.bincount(arms, minlength=4)
    assert (np.abs(counts - 5_000) < 4 * math.sqrt(20_000 * 0.25 * 0.75)).all()  # 4 SD
    moved = (assign_arms(users, 4, salt=1) != arms).mean()
    assert moved == pytest.approx(0.75, abs=0.02)


# ------------------------------------------------------------------------------ statistics


def test_the_z_test_and_interval_match_a_hand_computation():
    test = two_proportion_test(100, 1_000, 130, 1_000)
    # By hand: rates 0.10 and 0.13; pooled rate 230/2000 = 0.115.
    pooled_se = math.sqrt(0.115 * 0.885 * (1 / 1_000 + 1 / 1_000))  # 0.0142674
    z = 0.03 / pooled_se  # 2.10274
    wald_se = math.sqrt(0.10 * 0.90 / 1_000 + 0.13 * 0.87 / 1_000)  # 0.0142513
    assert test.difference == pytest.approx(0.03)
    assert test.z == pytest.approx(z) == pytest.approx(2.10274, abs=1e-5)
    assert test.p_value == pytest.approx(2 * stats.norm.sf(z)) == pytest.approx(0.035488, 1e-4)
    assert test.interval == pytest.approx((0.03 - 1.959964 * wald_se, 0.03 + 1.959964 * wald_se))
    assert test.interval == pytest.approx((0.002068, 0.057932), abs=1e-6)
    assert two_proportion_test(130, 1_000, 100, 1_000).z == pytest.approx(-z)
    nothing = two_proportion_test(0, 50, 0, 80)
    assert (nothing.difference, nothing.z, nothing.p_value) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [
        ((5, 0, 1, 10), "n_a"),
        ((5, 10, 11, 10), "clicks_b"),
        ((-1, 10, 1, 10), "clicks_a"),
        ((1, 10, 1, 10, 1.0), "level"),
    ],
)
def test_bad_proportions_raise(arguments, pattern):
    with pytest.raises(ValueError, match=pattern):
        two_proportion_test(*arguments)


def test_the_user_bootstrap_matches_the_normal_interval_for_independent_users():
    # One impression per user: the cluster bootstrap is the plain bootstrap, whose interval
    # the normal one approximates.
    rng = np.random.default_rng(0)
    a = (rng.random(4_000) < 0.10).astype(float)
    b = (rng.random(5_000) < 0.13).astype(float)
    low, high = bootstrap_over_users(a, np.ones_like(a), b, np.ones_like(b), seed=1)
    normal = two_proportion_test(a.sum(), len(a), b.sum(), len(b))
    assert low == pytest.approx(normal.interval[0], abs=0.002)
    assert high == pytest.approx(normal.interval[1], abs=0.002)
    # Clustered users (all or nothing): the same rates, a much wider interval.
    clustered = bootstrap_over_users(10 * a, 10 * np.ones_like(a), 10 * b, 10 * np.ones_like(b))
    wide = two_proportion_test(10 * a.sum(), 10 * len(a), 10 * b.sum(), 10 * len(b))
    assert clustered[1] - clustered[0] > 2.5 * (wide.interval[1] - wide.interval[0])
    with pytest.raises(ValueError, match="clicks_b"):
        bootstrap_over_users(a, np.ones_like(a), b, np.ones(3))


def test_standardised_scores_keep_each_users_order():
    scores = np.array([[3.0, np.nan, 1.0, 2.0], [np.nan] * 4, [5.0, 5.0, 5.0, np.nan]])
    out = standardised_scores(scores)
    assert np.isfinite(out).all()
    assert out[0].tolist() == pytest.approx([math.sqrt(1.5), 0.0, -math.sqrt(1.5), 0.0])
    assert out[1].tolist() == [0.0] * 4 and out[2].tolist() == [0.0] * 4


# ------------------------------------------------------------------------------ the harness


def test_the_oracle_beats_random_by_a_wide_margin():
    report = ab_test(SMALL, {"random": "random", "oracle": "oracle"}, rounds=30, warmup_rounds=5)
    random, oracle = report.arms
    assert oracle.click_rate > 2.5 * random.click_rate
    assert oracle.regret == pytest.approx(0.0, abs=1e-9)
    assert random.regret > 0.3 * random.oracle.sum()
    (verdict,) = report.comparisons
    assert verdict.test.p_value < 1e-6 and verdict.test.interval[0] > 0.1
    assert verdict.bootstrap_interval[0] > 0.1


def test_regret_is_never_negative_and_arms_split_the_traffic():
    policies = {"greedy": "greedy", "epsilon": "epsilon(epsilon=0.2)", "oracle": "oracle"}
    report = ab_test(SMALL, policies, rounds=40, seed=2, warmup_rounds=5)
    for arm in report.arms:
        assert (arm.oracle - arm.expected >= -1e-9).all()  # the oracle wins every round
        assert set(assign_arms(Simulator.user_ids(arm.users), 3, salt=2)) == {
            list(policies).index(arm.name)
        }
    assert sum(int(arm.slates.sum()) for arm in report.arms) == 40 * SMALL.users_per_round
    assert report.arm("greedy").regret > 0
    for arm in report.arms:
        assert arm.user_impressions.sum() == arm.impressions
        assert arm.user_clicks.sum() == arm.total_clicks


def test_ab_test_is_deterministic_and_an_arm_does_not_depend_on_the_others():
    run = lambda other: ab_test(  # noqa: E731
        SMALL, {"greedy": "greedy", "other": other}, rounds=25, seed=1, warmup_rounds=5
    )
    first, again, different = run("linucb"), run("linucb"), run("random")
    for a, b in zip(first.arms, again.arms, strict=True):
        np.testing.assert_array_equal(a.clicks, b.clicks)
        np.testing.assert_array_equal(a.expected, b.expected)
    # The same world and the same users: the baseline arm is the same whatever the other does.
    np.testing.assert_array_equal(first.arms[0].clicks, different.arms[0].clicks)
    np.testing.assert_array_equal(first.arms[0].oracle, different.arms[0].oracle)
    assert not np.array_equal(first.arms[1].expected, different.arms[1].expected)


def test_policies_may_be_factories_of_the_simulator():
    report = ab_test(
        SMALL,
        {"greedy": lambda world: Greedy(k=3), "truth": lambda world: OraclePolicy(world, k=3)},
        rounds=5,
        warmup_rounds=2,
    )
    assert report.arm("truth").regret == pytest.approx(0.0, abs=1e-9)
    assert "OraclePolicy" in report.arm("truth").policy


@pytest.mark.parametrize(
    ("policies", "error", "pattern"),
    [
        ({}, ValueError, "at least one"),
        ({"a": "nonsense"}, ValueError, "unknown policy"),
        ({"a": "greedy(k=2)"}, ValueError, r"policies\['a'\]: k=2"),
        ({"a": lambda world: "greedy"}, ValueError, "factory returned str"),
        ({"a": 3}, ValueError, "spec or a factory"),
    ],
)
def test_bad_policies_raise(policies, error, pattern):
    with pytest.raises(error, match=pattern):
        ab_test(SMALL, policies, rounds=1, warmup_rounds=1)


def test_bad_harness_arguments_raise():
    with pytest.raises(ValueError, match="rounds"):
        ab_test(SMALL, {"a": "greedy"}, rounds=0)
    with pytest.raises(TypeError, match="config"):
        ab_test({"n_users": 3}, {"a": "greedy"}, rounds=1)


def test_simulate_report_writes_the_json_table_and_plot(tmp_path):
    result = simulate_report(
        ["greedy", "epsilon(epsilon=0.1)", "epsilon(epsilon=0.3)"], rounds=8, out=tmp_path,
        config=SMALL, warmup_rounds=2, n_boot=200,
    )  # fmt: skip
    assert [arm["arm"] for arm in result["arms"]] == ["greedy", "epsilon", "epsilon#2"]
    assert result["specs"]["epsilon#2"] == "epsilon(epsilon=0.3)"
    assert [c["arm"] for c in result["comparisons"]] == ["epsilon", "epsilon#2"]
    assert result["protocol"] == "P4" and "| greedy |" in result["markdown"]
    json.dumps(result)  # JSON-ready
    stored = json.loads((tmp_path / "p4.json").read_text())
    assert len(stored["curves"]["greedy"]["cumulative_regret"]) == 8
    assert (tmp_path / "p4.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "p4.md").read_text().startswith("| arm |")
    assert "paths" not in simulate_report(["greedy"], 2, None, config=SMALL, warmup_rounds=1)
    with pytest.raises(ValueError, match="policies"):
        simulate_report(["greedy", " "], 2, None, config=SMALL)
