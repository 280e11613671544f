"""Deciding for users whose allowed candidates differ, in one call (``allowed``): each user is
decided for as if alone over their allowed candidates, and is never shown another.

The P4 benchmark got 4.7x slower when serve called ``decide`` once per distinct pool; the mask
lets one call serve them all, so every test here compares a masked batch with the single-user
calls it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_conformance import policy_inputs

from lifelong_rec.policy import Decisions, Policy, parse_policy
from lifelong_rec.policy.slates import outside_top_k

#: every registered policy, and the variants that take another path (Monte-Carlo positions,
#: the hybrid ridge, the uniform slice); draws large enough for the stated tolerances
SPECS = {
    "greedy": "greedy",
    "greedy-uniform": "greedy(uniform_share=0.3)",
    "random": "random",
    "epsilon": "epsilon(epsilon=0.3)",
    "epsilon-uniform": "epsilon(epsilon=0.3, uniform_share=0.2)",
    "softmax": "softmax(temperature=0.7)",
    "softmax-mc": "softmax(temperature=0.7, exact_max_candidates=1, propensity_draws=4000)",
    "linucb": "linucb(alpha=1.0)",
    "linucb-hybrid": "linucb(alpha=1.0, variant=hybrid)",
    "thompson": "thompson(propensity_draws=4000)",
    "lin-thompson": "lin-thompson(propensity_draws=4000)",
}
#: Monte-Carlo propensities: two independent estimates from 4,000 draws each differ by a
#: standard deviation of at most 0.011 per entry; 0.06 is over 5 of them.
MONTE_CARLO = {"softmax-mc", "thompson", "lin-thompson"}
MONTE_CARLO_TOLERANCE = 0.06
K = 3


def _mask(n: int, m: int, seed: int, k: int = K) -> np.ndarray:
    """A random mask that allows each user at least ``k`` candidates and, when ``m > k``,
    not all of them."""
    rng = np.random.default_rng(seed)
    allowed = rng.random((n, m)) < 0.6
    for row in range(n):  # the test's own setup: at least k allowed, at least one not
        allowed[row, rng.choice(m, k, replace=False)] = True
        if allowed[row].all() and m > k:
            allowed[row, rng.integers(m)] = False
    return allowed


def _trained(spec: str, m: int = 8) -> Policy:
    """The policy after three rounds of rewards on all ``m`` candidates (learned state)."""
    policy = parse_policy(spec, k=K, seed=5)
    for batch in range(3):
        inputs = policy_inputs(20, m, seed=100 + batch)
        decisions = policy.decide(**inputs)
        rewards = np.random.default_rng(batch).integers(0, 2, decisions.slates.shape)
        policy.update(decisions, rewards.astype(np.float64))
    return policy


def _alone(inputs: dict, allowed: np.ndarray, row: int) -> dict:
    """The inputs of user ``row`` alone, over their allowed candidates only."""
    keep = allowed[row]
    return {
        "users": [inputs["users"][row]],
        "candidates": list(np.asarray(inputs["candidates"])[keep]),
        "scores": inputs["scores"][row : row + 1, keep],
        "user_features": inputs["user_features"][row : row + 1],
        "item_features": inputs["item_features"][keep],
    }


@pytest.fixture(params=sorted(SPECS), scope="module")
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def trained(name: str) -> Policy:
    return _trained(SPECS[name])


# ------------------------------------------------------------------------------ checks


def _bad(allowed: object, k: int = K) -> tuple[dict, object, int]:
    return policy_inputs(2, 4, seed=0), allowed, k


BAD_MASKS = [
    (np.ones((2, 4), dtype=np.int64), "allowed must be an array of bool, got dtype int64"),
    (np.ones((2, 5), dtype=bool), r"allowed: expected shape \(2, 4\)"),
    (np.ones((4,), dtype=bool), r"allowed: expected shape \(2, 4\)"),
    (np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool), "allowed leaves user 1 2 candidates"),
]


@pytest.mark.parametrize(("allowed", "message"), BAD_MASKS)
@pytest.mark.parametrize("method", ["decide", "marginals"])
def test_a_bad_mask_raises_naming_allowed(allowed, message, method):
    policy = parse_policy("softmax", k=K)
    with pytest.raises(ValueError, match=message):
        getattr(policy, method)(**policy_inputs(2, 4, seed=0), allowed=allowed)


def test_a_mask_that_allows_everything_decides_exactly_as_none(name):
    """Same slates, propensities and random stream: no existing result changes."""
    with_mask, without = _trained(SPECS[name]), _trained(SPECS[name])
    inputs = policy_inputs(30, 7, seed=1)
    everything = np.ones((30, 7), dtype=bool)
    for _ in range(2):
        a, b = with_mask.decide(**inputs, allowed=everything), without.decide(**inputs)
        assert np.array_equal(a.slates, b.slates)
        assert np.array_equal(a.propensities, b.propensities)
        assert np.array_equal(a.exploring, b.exploring)
        assert np.array_equal(a.explored, b.explored)
    assert np.array_equal(
        with_mask.marginals(**inputs, allowed=everything), without.marginals(**inputs)
    )


# ------------------------------------------------------------------------------ never shown


def test_a_disallowed_candidate_is_never_shown_in_2000_decisions(trained):
    n, m = 2000, 8
    inputs, allowed = policy_inputs(n, m, seed=2), _mask(n, m, seed=3)
    decisions = trained.copy().decide(**inputs, allowed=allowed)
    shown = _indexes(decisions, inputs)
    assert np.take_along_axis(allowed, shown, axis=1).all()
    assert (decisions.propensities > 0).all()
    assert (np.sort(shown, axis=1)[:, 1:] != np.sort(shown, axis=1)[:, :-1]).all()  # distinct


def _indexes(decisions: Decisions, inputs: dict) -> np.ndarray:
    candidates = np.asarray(inputs["candidates"])
    return np.searchsorted(candidates, decisions.slates, sorter=np.argsort(candidates))


def test_marginals_are_zero_outside_the_mask_and_each_position_sums_to_one(name, trained):
    n, m = 40, 8
    inputs, allowed = policy_inputs(n, m, seed=4), _mask(n, m, seed=5)
    marginals = trained.copy().marginals(**inputs, allowed=allowed)
    assert (marginals[~allowed] == 0).all()
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, atol=1e-9)
    # Softmax estimates each Monte-Carlo position apart, so an item's sum may pass 1 a little.
    atol = MONTE_CARLO_TOLERANCE if name in MONTE_CARLO else 1e-9
    assert (marginals.sum(axis=2) <= 1.0 + atol).all()


# ------------------------------------------------------------------------------ alone


@pytest.mark.parametrize("spec", ["greedy", "linucb(alpha=1.0)", "linucb(variant=hybrid)"])
def test_deterministic_policies_decide_each_user_as_alone(spec):
    """Identical slates, propensities and exploring flags to the single-user calls."""
    n, m = 25, 9
    policy = _trained(spec, m=m)
    inputs, allowed = policy_inputs(n, m, seed=6), _mask(n, m, seed=7)
    batch = policy.copy().decide(**inputs, allowed=allowed)
    for row in range(n):
        alone = policy.copy().decide(**_alone(inputs, allowed, row))
        assert np.array_equal(batch.slates[row], alone.slates[0])
        np.testing.assert_array_equal(batch.propensities[row], alone.propensities[0])
        assert np.array_equal(batch.exploring[row], alone.exploring[0])
        if alone.features is not None:  # the linear bandits learn from these
            np.testing.assert_array_equal(batch.features[row], alone.features[0])


def test_marginals_of_each_user_are_those_of_the_user_alone(name, trained):
    n, m = 12, 8
    inputs, allowed = policy_inputs(n, m, seed=8), _mask(n, m, seed=9)
    batch = trained.copy().marginals(**inputs, allowed=allowed)
    atol = MONTE_CARLO_TOLERANCE if name in MONTE_CARLO else 1e-12
    for row in range(n):
        alone = trained.copy().marginals(**_alone(inputs, allowed, row))
        np.testing.assert_allclose(batch[row][allowed[row]], alone[0], atol=atol, rtol=0)


def test_propensities_of_shown_items_are_those_of_the_user_alone(name, trained):
    """The decision's own propensities, not only ``marginals``: for the shown items, the
    single-user call's marginals (exact policies: equal; Monte-Carlo: within tolerance)."""
    n, m = 12, 8
    inputs, allowed = policy_inputs(n, m, seed=10), _mask(n, m, seed=11)
    decisions = trained.copy().decide(**inputs, allowed=allowed)
    shown = _indexes(decisions, inputs)
    atol = MONTE_CARLO_TOLERANCE if name in MONTE_CARLO else 1e-12
    for row in range(n):
        alone = trained.copy().marginals(**_alone(inputs, allowed, row))[0]
        position = np.cumsum(allowed[row])[shown[row]] - 1  # index among the allowed
        expected = alone[position, np.arange(K)]
        np.testing.assert_allclose(decisions.propensities[row], expected, atol=atol, rtol=0)


def test_slates_are_drawn_from_the_user_alone_distribution(name, trained):
    """2,000 decisions for one user, batched with a mask, show each item at each position as
    often as the user's single-call marginals say (binomial, 2,000 draws: sd <= 0.011)."""
    n, m = 2000, 8
    inputs = policy_inputs(1, m, seed=12)
    allowed = np.repeat(_mask(1, m, seed=13), n, axis=0)
    batch = {
        "users": [f"u{i}" for i in range(n)],
        "candidates": inputs["candidates"],
        "scores": np.repeat(inputs["scores"], n, axis=0),
        "user_features": np.repeat(inputs["user_features"], n, axis=0),
        "item_features": inputs["item_features"],
    }
    shown = _indexes(trained.copy().decide(**batch, allowed=allowed), batch)
    frequencies = np.stack([np.bincount(shown[:, j], minlength=m) / n for j in range(K)], axis=1)
    alone = trained.copy().marginals(**_alone(inputs, allowed, 0))[0]
    assert (frequencies[~allowed[0]] == 0).all()
    atol = 0.05 + (MONTE_CARLO_TOLERANCE if name in MONTE_CARLO else 0.0)
    np.testing.assert_allclose(frequencies[allowed[0]], alone, atol=atol, rtol=0)


# ------------------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    m=st.integers(3, 9),
    k=st.integers(1, 3),
    spec=st.sampled_from(["epsilon(epsilon=0.4, uniform_share=0.1)", "softmax(temperature=0.3)"]),
)
def test_exact_marginals_sum_to_one_over_the_allowed_candidates(seed, m, k, spec):
    inputs, allowed = policy_inputs(4, m, seed), _mask(4, m, seed, k=k)
    marginals = parse_policy(spec, k=k).marginals(**inputs, allowed=allowed)
    assert (marginals[~allowed] == 0).all()
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(2, 9), k=st.integers(1, 2))
def test_outside_top_k_judges_among_allowed_candidates(seed, m, k):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 3, size=(5, m)).astype(np.float64)  # ties on purpose
    allowed = _mask(5, m, seed, k=k)
    chosen = np.stack([rng.choice(np.flatnonzero(row), k, replace=False) for row in allowed])
    masked = outside_top_k(values, chosen, k, allowed)
    for row in range(5):
        keep = np.flatnonzero(allowed[row])
        alone = outside_top_k(
            values[row : row + 1, keep], np.searchsorted(keep, chosen[row : row + 1]), k
        )
        assert np.array_equal(masked[row], alone[0])
