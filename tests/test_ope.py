"""Off-policy evaluation (P3): estimators against numpy, unbiasedness, bootstrap, bad logs, OBD."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from lifelong_rec.evaluate import (
    DM,
    DR,
    IPS,
    SNIPS,
    BanditLog,
    SmoothedClickRates,
    SwitchDR,
    beta_posterior,
    broadcast_target,
    logged_action_distribution,
    ope_report,
    replay,
    replay_report,
    thompson_action_distribution,
    uniform_action_distribution,
)
from lifelong_rec.events import EventBatch

ESTIMATORS = [IPS(), SNIPS(), DM(), DR(), SwitchDR(tau=2.0)]


def _hand_log() -> tuple[BanditLog, np.ndarray]:
    """Eight rows, three items, two positions, and a target that differs per row."""
    log = BanditLog(
        actions=[0, 1, 2, 0, 1, 2, 0, 1],
        positions=[0, 0, 1, 1, 0, 1, 0, 1],
        rewards=[1, 0, 0, 1, 1, 0, 0, 1],
        propensities=[0.5, 0.25, 0.25, 0.5, 0.25, 0.25, 0.5, 0.25],
        contexts=np.zeros((8, 0)),
        n_actions=3,
    )
    rng = np.random.default_rng(7)
    target = rng.dirichlet(np.ones(3), size=(8, 2)).transpose(0, 2, 1)  # (n, actions, positions)
    return log, target


def _simulate(n: int, seed: int, behaviour: np.ndarray, ctr: np.ndarray) -> BanditLog:
    """A context-free log: position uniform, item ~ behaviour[:, position], click ~ ctr."""
    rng = np.random.default_rng(seed)
    n_actions, n_positions = behaviour.shape
    positions = rng.integers(0, n_positions, n)
    cumulative = np.cumsum(behaviour, axis=0)[:, positions].T  # (n, actions)
    actions = np.minimum((rng.random(n)[:, None] > cumulative).sum(1), n_actions - 1)
    rewards = (rng.random(n) < ctr[actions, positions]).astype(np.float64)
    return BanditLog(
        actions=actions,
        positions=positions,
        rewards=rewards,
        propensities=behaviour[actions, positions],
        contexts=np.zeros((n, 0)),
        n_actions=n_actions,
    )


BEHAVIOUR = np.array([[0.6, 0.1], [0.3, 0.3], [0.1, 0.6]])
EVALUATION = np.array([[0.1, 0.5], [0.2, 0.4], [0.7, 0.1]])
CTR = np.array([[0.05, 0.02], [0.10, 0.04], [0.30, 0.10]])
TRUE_VALUE = float((EVALUATION * CTR).sum(0).mean())  # positions equally likely


# --------------------------------------------------------------------- against numpy


def test_ips_and_snips_equal_a_direct_numpy_computation():
    log, target = _hand_log()
    rows = np.arange(8)
    pi = target[rows, log.actions, log.positions]
    w = pi / log.propensities
    r = log.rewards
    assert IPS().estimate(log, target) == pytest.approx(np.mean(r * w), rel=1e-12)
    assert SNIPS().estimate(log, target) == pytest.approx(np.sum(r * w) / np.sum(w), rel=1e-12)


def test_dm_dr_and_switch_dr_equal_a_direct_numpy_computation():
    log, target = _hand_log()
    rows = np.arange(8)
    q = SmoothedClickRates().predict(log, n_positions=2)  # (n, actions) at each row's position
    pi_rows = target[rows, :, log.positions]
    w = target[rows, log.actions, log.positions] / log.propensities
    q_logged = q[rows, log.actions]
    dm = np.mean(np.sum(pi_rows * q, axis=1))
    dr = dm + np.mean(w * (log.rewards - q_logged))
    switch = dm + np.mean(np.where(w <= 2.0, w * (log.rewards - q_logged), 0.0))
    assert DM().estimate(log, target) == pytest.approx(dm, rel=1e-12)
    assert DR().estimate(log, target) == pytest.approx(dr, rel=1e-12)
    assert SwitchDR(tau=2.0).estimate(log, target) == pytest.approx(switch, rel=1e-12)
    assert SwitchDR(tau=math.inf).estimate(log, target) == pytest.approx(dr, rel=1e-12)
    assert SwitchDR(tau=1e-9).estimate(log, target) == pytest.approx(dm, rel=1e-12)


def test_a_two_dimensional_target_is_the_same_distribution_at_every_position():
    log, target = _hand_log()
    flat = target[:, :, 0]
    same = np.repeat(flat[:, :, None], 2, axis=2)
    for estimator in ESTIMATORS:
        assert estimator.estimate(log, flat) == pytest.approx(estimator.estimate(log, same))


def test_the_reward_model_smooths_cells_as_documented():
    log, _ = _hand_log()
    s = 4.0
    rates = SmoothedClickRates(prior_strength=s).rates(log, n_positions=2)
    r, a, k = log.rewards, log.actions, log.positions
    overall = r.mean()
    item = (r[a == 1].sum() + s * overall) / ((a == 1).sum() + s)
    position = (r[k == 0].sum() + s * overall) / ((k == 0).sum() + s)
    cell = (a == 1) & (k == 0)
    expected = (r[cell].sum() + s * item * position / overall) / (cell.sum() + s)
    assert rates[1, 0] == pytest.approx(expected, rel=1e-12)


def test_the_reward_model_is_cross_fitted_so_a_row_never_predicts_itself():
    log, _ = _hand_log()
    model = SmoothedClickRates()
    folds = model.folds(len(log))
    flipped = BanditLog(
        actions=log.actions,
        positions=log.positions,
        rewards=np.where(np.arange(8) == 0, 1 - log.rewards, log.rewards),
        propensities=log.propensities,
        contexts=log.contexts,
        n_actions=3,
    )
    before, after = model.predict(log, 2), model.predict(flipped, 2)
    same_fold = folds == folds[0]
    np.testing.assert_array_equal(before[same_fold], after[same_fold])
    assert not np.array_equal(before[~same_fold], after[~same_fold])


# ------------------------------------------------------------------ statistical checks


def test_ips_is_unbiased_on_simulated_logs_with_a_known_truth():
    estimates = np.array(
        [
            IPS().estimate(log, broadcast_target(EVALUATION, len(log)))
            for log in (_simulate(2000, seed, BEHAVIOUR, CTR) for seed in range(200))
        ]
    )
    standard_error = estimates.std(ddof=1) / math.sqrt(len(estimates))
    # fixed seeds; 4 standard errors (about 0.0056 here) is the stated tolerance
    assert abs(estimates.mean() - TRUE_VALUE) < 4 * standard_error
    assert abs(estimates.mean() - TRUE_VALUE) < 0.01


def test_dr_and_switch_dr_are_close_to_the_truth_on_a_large_simulated_log():
    log = _simulate(50_000, 1, BEHAVIOUR, CTR)
    target = broadcast_target(EVALUATION, len(log))
    for estimator in (SNIPS(), DR(), SwitchDR(tau=2.0)):
        assert estimator.estimate(log, target) == pytest.approx(TRUE_VALUE, abs=0.01)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.label)
def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data(estimator):
    widths = []
    for n in (500, 5000):
        log = _simulate(n, 3, BEHAVIOUR, CTR)
        target = broadcast_target(EVALUATION, n)
        low, high = estimator.interval(log, target, n_boot=300, seed=0)
        assert low <= estimator.estimate(log, target) <= high
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]  # about 1 / sqrt(10) expected


def test_bootstrap_is_seeded_and_the_model_based_one_refits_the_reward_model():
    log = _simulate(400, 5, BEHAVIOUR, CTR)
    target = broadcast_target(EVALUATION, len(log))
    first = DM().bootstrap(log, target, n_boot=50, seed=1)
    np.testing.assert_array_equal(first, DM().bootstrap(log, target, n_boot=50, seed=1))
    # with the reward model held fixed, DM's replicates would barely move: 0.002 in this log
    assert first.std() > 0.005


# ------------------------------------------------------------------------- bad logs


def _log_with(**changes: object) -> dict[str, object]:
    fields = dict(
        actions=[0, 1, 2],
        positions=[0, 1, 2],
        rewards=[0.0, 1.0, 0.0],
        propensities=[0.5, 0.5, 0.5],
        contexts=np.zeros((3, 1)),
        n_actions=3,
    )
    return fields | changes


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"propensities": [0.5, np.nan, 0.5]}, r"propensities: 1 of 3 rows have no propensity"),
        ({"propensities": [0.5, 0.0, 0.5]}, r"propensities: .*not > 0"),
        ({"propensities": [-0.1, 0.5, 0.5]}, r"propensities: .*not > 0"),
        ({"propensities": [0.5, 1.5, 0.5]}, r"propensities: .*above 1"),
        ({"propensities": [0.5, 0.5]}, r"propensities: expected shape \(3,\)"),
        ({"rewards": [0.0, -1.0, 0.0]}, r"rewards: .*negative, but a click reward is 0 or 1"),
        ({"rewards": [0.0, 0.5, 0.0]}, r"rewards: .*not 0 or 1"),
        ({"rewards": [0.0, np.nan, 0.0]}, r"rewards: .*no finite reward"),
        ({"actions": [0, 3, 1]}, r"actions: .*not in \[0, n_actions\)"),
        ({"positions": [0, -1, 1]}, r"positions: .*negative"),
        ({"contexts": np.zeros((2, 1))}, r"contexts: expected shape"),
        ({"n_actions": 0}, r"n_actions: must be a positive integer"),
        ({"reward": "watch"}, r"reward: must be 'click' or 'real'"),
    ],
)
def test_bad_logs_raise_value_errors_naming_the_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        BanditLog(**_log_with(**changes))


def test_negative_rewards_are_allowed_when_the_reward_is_not_a_click():
    log = BanditLog(**_log_with(rewards=[-1.0, 2.5, 0.0], reward="real"))
    assert log.rewards.tolist() == [-1.0, 2.5, 0.0]


def _uniform(n: int, n_actions: int = 3, n_positions: int = 3) -> np.ndarray:
    return np.full((n, n_actions, n_positions), 1 / n_actions)


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        (_uniform(2), r"target: expected shape \(3, 3, n_positions\) or \(3, 3\), got \(2, 3, 3\)"),
        (_uniform(3, n_actions=4), r"target: expected shape"),
        (np.full((3, 3, 3, 1), 1 / 3), r"target: expected shape"),
        (np.full(3, 1 / 3), r"target: expected shape"),
        (_uniform(3, n_positions=2), r"target: has 2 positions, the log has position 2"),
        (_uniform(3) * 0.9, r"target: each row must sum to 1 .* row 0 sums to 0.9"),
        (np.full((3, 3), 0.5), r"target: each row must sum to 1"),
        (np.repeat(np.where(np.eye(3) > 0, -0.5, 0.75)[None], 3, 0), r"target: .*finite and >= 0"),
        (np.full((3, 3), np.nan), r"target: .*finite"),
    ],
)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: e.label)
def test_bad_targets_raise_value_errors_naming_target(estimator, target, pattern):
    log = BanditLog(**_log_with())
    with pytest.raises(ValueError, match=pattern):
        estimator.estimate(log, target)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="tau: must be > 0"):
        SwitchDR(tau=0.0)
    with pytest.raises(ValueError, match="prior_strength"):
        SmoothedClickRates(prior_strength=-1.0)
    with pytest.raises(ValueError, match="n_folds"):
        SmoothedClickRates(n_folds=1)
    log = BanditLog(**_log_with())
    with pytest.raises(ValueError, match="n_boot"):
        IPS().interval(log, _uniform(3), n_boot=0)
    with pytest.raises(ValueError, match="level"):
        IPS().interval(log, _uniform(3), level=1.5)


# ------------------------------------------------------------------- from events


def _events(propensity: list[float] | None = None, clicks: tuple[float, ...] = (1, 0, 0)):
    return EventBatch.from_columns(
        ["u1", "u2", "u1"],
        ["b", "c", "a"],
        [1.0, 2.0, 3.0],
        ["click" if c == 1 else "impression" for c in clicks],
        clicks,
        context={"position": [1, 3, 2], "user_feature_0": ["x", "y", "x"], "aff": [0.5, 0, 1]},
        propensity=[0.2, 0.3, 0.4] if propensity is None else propensity,
    )


def test_from_events_maps_items_positions_and_features():
    log = BanditLog.from_events(_events(), ["a", "b", "c"])
    assert log.actions.tolist() == [1, 2, 0]
    assert log.positions.tolist() == [0, 2, 1]
    assert log.rewards.tolist() == [1.0, 0.0, 0.0]
    assert log.propensities.tolist() == [0.2, 0.3, 0.4]
    # aff (numeric), then user_feature_0 one-hot (x, y): sorted by column name
    np.testing.assert_array_equal(log.contexts, [[0.5, 1, 0], [0, 0, 1], [1, 1, 0]])
    assert log.items.tolist() == ["a", "b", "c"] and log.n_positions == 3


def test_from_events_rejects_missing_propensities_unknown_items_and_negative_clicks():
    no_propensity = EventBatch.from_columns(["u"], ["a"], [1.0], "click", [1.0])
    with pytest.raises(ValueError, match="propensities: 1 of 1 rows have no propensity"):
        BanditLog.from_events(no_propensity, ["a"])
    with pytest.raises(ValueError, match=r"propensities: .*not > 0"):
        BanditLog.from_events(_events(propensity=[0.2, 0.0, 0.4]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="item: 'c' is not one of the 2 items"):
        BanditLog.from_events(_events(), ["a", "b"])
    with pytest.raises(ValueError, match=r"rewards: .*negative"):
        BanditLog.from_events(_events(clicks=(1, -1, 0)), ["a", "b", "c"])


# ---------------------------------------------------------------- action distributions


@settings(max_examples=25, deadline=None)
@given(
    counts=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 500)), min_size=3, max_size=12),
    n_positions=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_thompson_distribution_sums_to_one_per_position(counts, n_positions, seed):
    clicks = np.array([c for c, _ in counts], dtype=float)
    misses = np.array([m for _, m in counts], dtype=float)
    dist = thompson_action_distribution(1 + clicks, 1 + misses, n_positions, n_sim=500, seed=seed)
    assert dist.shape == (len(counts), n_positions)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    np.testing.assert_allclose(dist.sum(axis=1), np.minimum(dist.sum(axis=1), 1.0))  # <= 1
    again = thompson_action_distribution(1 + clicks, 1 + misses, n_positions, 500, seed)
    np.testing.assert_array_equal(dist, again)


def test_thompson_distribution_matches_the_exact_probability_for_two_items():
    alpha, beta = np.array([3.0, 5.0]), np.array([40.0, 60.0])

    def first_wins(x: float) -> float:  # P(theta_0 = x and theta_1 < x)
        return stats.beta.pdf(x, alpha[0], beta[0]) * stats.beta.cdf(x, alpha[1], beta[1])

    exact = integrate.quad(first_wins, 0, 1)[0]
    dist = thompson_action_distribution(alpha, beta, n_positions=2, n_sim=200_000, seed=3)
    # 200,000 draws: standard error below 0.0012; tolerance 0.005
    assert dist[0, 0] == pytest.approx(exact, abs=0.005)
    assert dist[1, 1] == pytest.approx(exact, abs=0.005)  # two items: the loser is second


def test_beta_posterior_prior_has_the_logs_click_rate_and_weighs_one_click():
    log = _simulate(3000, 2, BEHAVIOUR, CTR)
    alpha, beta = beta_posterior(log)
    rate = log.rewards.mean()
    clicks = np.bincount(log.actions, weights=log.rewards, minlength=3)
    shown = np.bincount(log.actions, minlength=3)
    np.testing.assert_allclose(alpha, 1 + clicks)
    np.testing.assert_allclose(beta, 1 / rate - 1 + shown - clicks)


def test_uniform_and_logged_distributions():
    np.testing.assert_array_equal(uniform_action_distribution(4, 3), np.full((4, 3), 0.25))
    log = BanditLog(**_log_with(actions=[0, 0, 2], positions=[0, 0, 1]))
    dist = logged_action_distribution(log, n_positions=3)
    np.testing.assert_array_equal(dist[:, 0], [1, 0, 0])
    np.testing.assert_array_equal(dist[:, 1], [0, 0, 1])
    np.testing.assert_allclose(dist[:, 2], 1 / 3)  # no rows at this position: uniform


# ----------------------------------------------------------------------------- replay


class FixedPolicy:
    """Stand-in for lifelong_rec.policy: always picks one item; records its updates."""

    def __init__(self, item: str) -> None:
        self.item = item
        self.updates: list[np.ndarray] = []
        self.feature_widths: set[int] = set()

    def decide(self, users, candidates, scores=None, user_features=None, item_features=None):
        assert self.item in candidates
        self.feature_widths.add(user_features.shape[1])
        slates = np.full((len(users), 1), self.item)
        return types.SimpleNamespace(slates=slates, propensities=np.ones((len(users), 1)))

    def update(self, decisions, rewards) -> None:
        assert rewards.shape == decisions.slates.shape
        self.updates.append(rewards.copy())


class GreedyCounts:
    """Stand-in learner: the item with the most observed clicks, in slates of two."""

    def __init__(self, items: list[str]) -> None:
        self.clicks = dict.fromkeys(items, 0.0)

    def decide(self, users, candidates, scores=None, user_features=None, item_features=None):
        best = max(candidates, key=lambda item: (self.clicks[item], item))
        return types.SimpleNamespace(slates=np.full((len(users), 2), best), propensities=None)

    def update(self, decisions, rewards) -> None:
        for item, reward in zip(decisions.slates[:, 0], rewards[:, 0], strict=True):
            if not np.isnan(reward):
                self.clicks[item] += reward


def _uniform_log_events(n: int = 600, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    items = np.array(["a", "b", "c"])
    shown = rng.integers(0, 3, n)
    clicks = (rng.random(n) < np.array([0.1, 0.3, 0.6])[shown]).astype(float)
    return EventBatch.from_columns(
        rng.integers(0, 20, n),
        items[shown],
        np.arange(n, dtype=float)[::-1],  # reversed: replay must sort by time
        "impression",
        clicks,
        context={"position": rng.integers(1, 4, n)},
        propensity=np.full(n, 1 / 3),
    )


@pytest.mark.parametrize("batch_size", [1, 50])
def test_replay_counts_the_rows_where_the_policy_chose_the_logged_item(batch_size):
    events = _uniform_log_events()
    policy = FixedPolicy("b")
    result = replay(policy, events, ["a", "b", "c"], batch_size=batch_size)
    matched = events.item == "b"
    assert result.counted == int(matched.sum()) and result.rows == len(events)
    assert result.value == pytest.approx(events.value[matched].mean())
    learned = np.concatenate([u[:, 0] for u in policy.updates])
    assert np.nansum(learned) == events.value[matched].sum()
    assert np.isfinite(learned).sum() == result.counted  # unmatched rows of a batch are NaN
    assert policy.feature_widths == {3}  # one-hot position; the log has no other context


def test_replay_of_a_learner_uses_the_first_position_and_beats_the_uniform_policy():
    events = _uniform_log_events(3000, seed=1)
    result = replay(GreedyCounts(["a", "b", "c"]), events, ["a", "b", "c"])
    assert result.value > events.value.mean()  # learns that "c" clicks most (0.6 vs 0.33)


@pytest.mark.parametrize("spec", ["greedy", "epsilon(epsilon=0.1)", "linucb", "thompson"])
def test_replay_of_the_policy_package_learns_the_best_item(spec):
    policy_package = pytest.importorskip("lifelong_rec.policy")
    events = _uniform_log_events(3000, seed=2)
    policy = policy_package.parse_policy(spec, k=1, seed=0)
    result = replay(policy, events, ["a", "b", "c"], batch_size=10)
    assert result.counted > 500
    # uniform: 0.33; always "c": 0.6; a learner that settles on "c" is well above uniform
    assert result.value > 0.45


# --------------------------------------------------------------------------- real OBD


@pytest.fixture(scope="module")
def obd(datasets):
    folder = datasets / "obd"
    if not (folder / "random" / "men").is_dir():
        pytest.skip(f"OBD sample not found at {folder}")
    return folder


def test_obd_random_log_reads_as_a_bandit_log(obd):
    from lifelong_rec.data import load

    data = load(obd / "random" / "men", "obd")
    log = BanditLog.from_events(data.events, data.catalog)
    assert len(log) == 10_000 and log.n_actions == 34 and log.n_positions == 3
    np.testing.assert_allclose(log.propensities, 1 / 34)
    assert log.rewards.mean() == pytest.approx(0.0046)


def test_ope_report_on_obd_is_exact_on_policy_and_complete_off_policy(obd):
    same = ope_report(obd, "men", "random", "random", estimators=("ips",), bootstrap=50)
    assert same["estimates"][0]["estimate"] == pytest.approx(same["truth"])  # all weights 1
    report = ope_report(obd, "men", "random", "bts", bootstrap=50, n_sim=2000)
    assert report["truth"] == pytest.approx(0.0069)  # the BTS log's own click rate
    assert [row["estimator"] for row in report["estimates"]] == [
        "ips",
        "snips",
        "dm",
        "dr",
        "switch-dr(tau=10)",
    ]
    for row in report["estimates"]:
        low, high = row["interval"]
        assert low <= row["estimate"] <= high
        assert row["relative_error"] == pytest.approx(
            abs(row["estimate"] - report["truth"]) / report["truth"]
        )
    assert len(report["distribution"]["total_variation_to_logged"]) == 3


def test_ope_report_names_bad_arguments(obd):
    with pytest.raises(ValueError, match="behavior"):
        ope_report(obd, "men", "greedy", "bts")
    with pytest.raises(ValueError, match="estimators: 'ipw'"):
        ope_report(obd, "men", "random", "bts", estimators=("ipw",))
    with pytest.raises(ValueError, match=r"log_path: .* not found"):
        ope_report(obd, "kids", "random", "bts")


def test_replay_report_on_obd_with_a_stand_in_policy_package(obd, monkeypatch):
    asked = []

    def parse_policy(spec: str, **defaults: object) -> FixedPolicy:
        asked.append((spec, defaults))
        return FixedPolicy("0")

    package = types.ModuleType("lifelong_rec.policy")
    package.parse_policy = parse_policy
    monkeypatch.setitem(sys.modules, "lifelong_rec.policy", package)
    report = replay_report(obd, "men", "fixed", batch_size=500, seed=3)
    assert asked[0][0] == "fixed" and asked[0][1]["k"] == 1 and asked[0][1]["seed"] == 3
    assert report["rows"] == 10_000
    assert 150 < report["counted_rows"] < 450  # item "0" was logged on about 1 row in 34
    assert report["logged"]["random"]["click_rate"] == pytest.approx(0.0046)
    assert report["logged"]["bts"]["click_rate"] == pytest.approx(0.0069)


def test_replay_report_on_obd_with_the_policy_package(obd):
    pytest.importorskip("lifelong_rec.policy")
    report = replay_report(obd, "men", "thompson", batch_size=200)
    assert report["policy"] == "thompson" and report["rows"] == 10_000
    assert report["counted_rows"] > 100
    low, high = report["interval"]
    assert 0 <= low <= report["estimate"] <= high
