"""Saving, loading and copying a policy's learned state (no pickle); the conformance suite runs
the round trip for every registered policy, these are the targeted cases and bad folders."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from test_conformance import policy_inputs

from lifelong_rec.policy import (
    BernoulliThompson,
    Context,
    EpsilonGreedy,
    Greedy,
    LinearThompson,
    LinUCB,
    Policy,
    Softmax,
)
from lifelong_rec.policy.persistence import FORMAT_VERSION
from lifelong_rec.policy.slates import one_hot_marginals, top_k


def _train(policy: Policy, batches: int = 3, seed: int = 0) -> Policy:
    rng = np.random.default_rng(seed)
    for batch in range(batches):
        decisions = policy.decide(**policy_inputs(10, 8, seed + batch))
        policy.update(decisions, rng.random(decisions.slates.shape))
    return policy


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "arrays.npz", allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


# ------------------------------------------------------------------------------ the folder


def test_the_folder_is_json_and_an_npz_without_pickle(tmp_path):
    policy = _train(LinUCB(k=2, alpha=0.5, variant="hybrid", seed=7))
    policy.save(tmp_path / "nested" / "linucb")  # parents are created
    folder = tmp_path / "nested" / "linucb"
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "policy.json"]
    manifest = json.loads((folder / "policy.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["name"] == "linucb"
    assert manifest["params"] == {
        "k": 2, "uniform_share": 0.0, "seed": 7, "alpha": 0.5, "regularization": 1.0,
        "variant": "hybrid",
    }  # fmt: skip
    assert manifest["rng_state"] == policy._rng.bit_generator.state
    arrays = _arrays(folder)
    assert sorted(arrays) == [
        "arms.design", "arms.design_inverse", "arms.dimension", "arms.ids", "arms.reward_sums",
    ]  # fmt: skip
    assert arrays["arms.ids"].tolist() == policy.arms_.ids.to_array().tolist()
    assert int(arrays["arms.dimension"]) == 1 + 2 + 3 + 1  # score, user, item features, bias
    np.testing.assert_array_equal(arrays["arms.design_inverse"], policy.arms_.design_inverse)


def test_policies_without_learned_state_save_no_arrays(tmp_path):
    Softmax(k=2, temperature=0.3, seed=2).save(tmp_path / "softmax")
    assert _arrays(tmp_path / "softmax") == {}
    loaded = Policy.load(tmp_path / "softmax")
    assert isinstance(loaded, Softmax) and loaded.temperature == 0.3


def test_saving_again_replaces_the_folder_s_state(tmp_path):
    policy = BernoulliThompson(k=2, seed=1)
    policy.save(tmp_path / "policy")
    _train(policy)
    policy.save(tmp_path / "policy")
    left = sorted(p.name for p in (tmp_path / "policy").iterdir())
    assert left == ["arrays.npz", "policy.json"]  # no partial files left behind
    loaded = Policy.load(tmp_path / "policy")
    np.testing.assert_array_equal(loaded.successes_, policy.successes_)
    assert len(loaded.items_) == 8


def test_thompson_posteriors_and_linear_bounds_survive_the_round_trip(tmp_path):
    thompson = _train(BernoulliThompson(k=3, alpha=2.0, beta=0.5, seed=3))
    thompson.save(tmp_path / "thompson")
    loaded = BernoulliThompson.load(tmp_path / "thompson")
    items = ["i0", "i5", "never-seen"]
    for ours, theirs in zip(loaded.posterior(items), thompson.posterior(items), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for variant in ("disjoint", "hybrid"):
        linucb = _train(LinUCB(k=3, variant=variant, seed=4))
        inputs = policy_inputs(5, 12, seed=9)  # four candidates never seen
        expected = linucb.upper_bounds(**inputs)  # the hybrid cache is filled here
        linucb.save(tmp_path / variant)
        again = LinUCB.load(tmp_path / variant)
        assert again.arms_._shared is None  # recomputed, from the saved arms
        np.testing.assert_array_equal(again.upper_bounds(**inputs), expected)
    linear = _train(LinearThompson(k=2, propensity_draws=30, seed=5))
    linear.save(tmp_path / "linear")
    inputs = policy_inputs(4, 8, seed=1)
    first, second = linear.decide(**inputs), Policy.load(tmp_path / "linear").decide(**inputs)
    np.testing.assert_array_equal(first.propensities, second.propensities)


def test_the_generator_continues_where_it_stopped(tmp_path):
    """Not re-seeded: a loaded policy draws what the original would draw next, not what a
    fresh policy with the same seed draws."""
    policy = EpsilonGreedy(k=2, epsilon=0.5, seed=8)
    inputs = policy_inputs(200, 6, seed=2)
    first = policy.decide(**inputs)
    policy.save(tmp_path / "policy")
    loaded = Policy.load(tmp_path / "policy")
    fresh = policy.clone()
    assert np.array_equal(fresh.decide(**inputs).slates, first.slates)
    after = policy.decide(**inputs).slates
    assert np.array_equal(loaded.decide(**inputs).slates, after)
    assert not np.array_equal(after, first.slates)


# ------------------------------------------------------------------------------ copies


def test_a_copy_taken_under_a_lock_saves_the_state_of_that_moment(tmp_path):
    """The service copies its shared policy under its lock and saves the copy from the
    learner's thread while requests go on changing the original."""
    policy = _train(LinUCB(k=2, seed=1))
    lock = threading.Lock()
    with lock:
        snapshot = policy.copy()
        expected = {name: array.copy() for name, array in policy._get_state().items()}
    saver = threading.Thread(target=snapshot.save, args=(tmp_path / "snapshot",))
    saver.start()
    for _ in range(5):  # meanwhile, the original keeps learning
        with lock:
            _train(policy, batches=1, seed=50)
    saver.join()
    saved = _arrays(tmp_path / "snapshot")
    assert saved.keys() == expected.keys()
    assert all(np.array_equal(saved[name], expected[name]) for name in saved)
    assert not np.array_equal(saved["arms.design"], policy.arms_.design[: len(saved["arms.ids"])])


def test_copies_share_no_arrays_with_the_original():
    for policy in (_train(BernoulliThompson(k=2)), _train(LinUCB(k=2, variant="hybrid"))):
        for twin in (policy.copy(), copy.deepcopy(policy)):
            for name, array in twin._get_state().items():
                assert not np.shares_memory(array, policy._get_state()[name]), name


# ------------------------------------------------------------------------------ bad folders


def _saved_linucb(folder: Path) -> Path:
    _train(LinUCB(k=2, seed=1)).save(folder)
    return folder


def _edit_json(folder: Path, change) -> None:
    manifest = json.loads((folder / "policy.json").read_text())
    change(manifest)
    (folder / "policy.json").write_text(json.dumps(manifest))


def _edit_arrays(folder: Path, change) -> None:
    arrays = _arrays(folder)
    change(arrays)
    np.savez(folder / "arrays.npz", **arrays)


def _set(key: str, value: object):
    return lambda manifest: manifest.__setitem__(key, value)


BAD_FOLDERS = [
    ("missing policy.json", lambda f: (f / "policy.json").unlink(), r"policy.json: missing"),
    ("missing arrays", lambda f: (f / "arrays.npz").unlink(), r"arrays.npz: missing"),
    ("not JSON", lambda f: (f / "policy.json").write_text("{"), r"policy.json: not valid JSON"),
    ("a JSON list", lambda f: (f / "policy.json").write_text("[]"), r"expected a JSON object"),
    (
        "an old format",
        lambda f: _edit_json(f, _set("format_version", 0)),
        r"policy.json: policy format version 0 is not the supported 1",
    ),
    (
        "no format",
        lambda f: _edit_json(f, lambda m: m.pop("format_version")),
        r"policy.json: policy format version None",
    ),
    (
        "an unknown name",
        lambda f: _edit_json(f, _set("name", "ucb2")),
        r"policy.json: unknown policy 'ucb2'; known: epsilon, greedy",
    ),
    (
        "no params",
        lambda f: _edit_json(f, lambda m: m.pop("params")),
        r"policy.json: 'params' is missing or not a dict",
    ),
    (
        "params the policy rejects",
        lambda f: _edit_json(f, lambda m: m["params"].__setitem__("alpha", -1.0)),
        r"policy.json: params: alpha must be finite and >= 0",
    ),
    (
        "an unknown param",
        lambda f: _edit_json(f, lambda m: m["params"].__setitem__("beta", 1.0)),
        r"policy.json: params: .*unexpected keyword argument 'beta'",
    ),
    (
        "a random state of another generator",
        lambda f: _edit_json(f, lambda m: m["rng_state"].__setitem__("bit_generator", "MT19937")),
        r"policy.json: rng_state does not fit the generator",
    ),
    (
        "a missing array",
        lambda f: _edit_arrays(f, lambda a: a.pop("arms.design_inverse")),
        r"arrays.npz: array 'arms.design_inverse' is missing",
    ),
    (
        "an extra array",
        lambda f: _edit_arrays(f, lambda a: a.__setitem__("arms.extra", np.zeros(2))),
        r"arrays.npz: unexpected arrays \['arms.extra'\]",
    ),
    (
        "arrays that do not fit",
        lambda f: _edit_arrays(f, lambda a: a.__setitem__("arms.reward_sums", np.zeros((1, 2)))),
        r"arrays.npz: ridge arms: reward_sums has shape \(1, 2\), expected \(\d+, 7\)",
    ),
    (
        "arrays that need pickle",
        lambda f: _edit_arrays(
            f, lambda a: a.__setitem__("arms.ids", np.array([{"i": 1}], dtype=object))
        ),
        r"arrays.npz: cannot be read without pickle",
    ),
    (
        "arrays that are not an archive",
        lambda f: (f / "arrays.npz").write_bytes(b"PK\x03\x04 truncated"),
        r"arrays.npz: cannot be read without pickle",
    ),
]


@pytest.mark.parametrize("_, damage, pattern", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_a_bad_folder_raises_a_value_error_naming_the_file(tmp_path, _, damage, pattern):
    folder = _saved_linucb(tmp_path / "policy")
    damage(folder)
    with pytest.raises(ValueError, match=pattern):
        Policy.load(folder)


def test_a_folder_that_is_not_there(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere/policy.json: missing; .* not a saved policy"):
        Policy.load(tmp_path / "nowhere")


def test_loading_through_a_subclass_checks_the_class(tmp_path):
    Greedy(k=2).save(tmp_path / "greedy")
    assert type(Greedy.load(tmp_path / "greedy")) is Greedy
    with pytest.raises(ValueError, match=r"holds a 'greedy' policy \(Greedy\), not a LinUCB"):
        LinUCB.load(tmp_path / "greedy")


class _Unregistered(Policy):
    """A policy with no name: never registered, so it could not be loaded."""

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        slates = top_k(context.scores, context.k, stable=True)
        return slates, one_hot_marginals(slates, context.n_candidates)


def test_an_unregistered_policy_is_not_saved(tmp_path):
    policy = _Unregistered(k=2)
    assert policy.decide(**policy_inputs(2, 4, seed=0), k=3).slates.shape == (2, 3)
    with pytest.raises(ValueError, match="_Unregistered is not a registered policy"):
        policy.save(tmp_path / "policy")
    assert not (tmp_path / "policy").exists()
    assert type(policy.copy()) is _Unregistered  # copies need no registry
