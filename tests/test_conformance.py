"""The contract every recommender and every exploration policy keeps, run for every
registered model and policy automatically.

A new model class joins this suite by subclassing Recommender (and may give small, fast
parameters through ``_unit_test_params``); a new policy, by subclassing Policy with a ``name``.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import threading

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.models import REASON_KINDS, Recommender, parse_model, registered_models
from lifelong_rec.policy import Decisions, Policy, registered_policies

MODELS = sorted(registered_models().items())
# Variants of a model that keep the contract as the model does: specs (parse_model) whose
# parameters are added to the model's _unit_test_params.
VARIANTS = [
    "mf(serve_precision='fp16')",
    "mf(serve_precision='int8')",
    "session-mf(serve_precision='int8')",
    "bpr(serve_precision='fp16')",
    "bpr(serve_precision='int8')",
]


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    return synthetic_stream(n_users=60, n_items=50, n_events=1_500, seed=5).events


@pytest.fixture(
    params=[cls for _, cls in MODELS] + VARIANTS, ids=[name for name, _ in MODELS] + VARIANTS
)
def model_class(request, monkeypatch) -> type[Recommender]:
    if not isinstance(request.param, str):
        return request.param
    factory = parse_model(request.param)[1]
    assert isinstance(factory, functools.partial)
    model_class, variant = factory.func, factory.keywords
    params = model_class._unit_test_params() | variant
    monkeypatch.setattr(model_class, "_unit_test_params", classmethod(lambda cls: params))
    return model_class


def _new(model_class: type[Recommender]) -> Recommender:
    return model_class(**model_class._unit_test_params())


def _fitted(model_class, stream) -> Recommender:
    return _new(model_class).fit(stream.take(slice(0, 1_000)))


def _snapshot(model: Recommender, tmp_path, name: str) -> dict[str, np.ndarray]:
    model.save(tmp_path / name)
    with np.load(tmp_path / name / "arrays.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["manifest"] = np.array((tmp_path / name / "manifest.json").read_text())
    return arrays


def _same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_learn_does_not_mutate_its_input(model_class, stream):
    batch = stream.take(slice(0, 300))
    before = {name: getattr(batch, name).copy() for name in ("user", "item", "weight", "timestamp")}
    model = _new(model_class)
    model.learn(batch)
    model.fit(batch)
    for name, values in before.items():
        assert np.array_equal(getattr(batch, name), values)
    assert not batch.user.flags.writeable


def test_ranking_scoring_and_explaining_are_pure(model_class, stream, tmp_path):
    model = _fitted(model_class, stream)
    model.learn(stream.take(slice(1_000, 1_010)))  # leave pending increments in place
    before = _snapshot(model, tmp_path, "before")
    users, items = np.unique(stream.user)[:20], np.unique(stream.item)[:30]
    first = model.recommend(users, k=5)
    scores = model.score(users, items)
    explanation = model.explain(users[0], items[0])
    assert np.array_equal(model.recommend(users, k=5).items, first.items)
    assert np.array_equal(model.score(users, items), scores, equal_nan=True)
    assert model.explain(users[0], items[0]) == explanation
    assert _same_state(before, _snapshot(model, tmp_path, "after"))


def test_a_model_read_by_many_threads_at_once_answers_as_alone(model_class, stream, tmp_path):
    # A published snapshot is read at once by request threads and the learner's test-then-
    # train: a cache built on a read must not be shared half-built (CI caught auto's item maps
    # appended to by two readers: "zip() argument 2 is longer than argument 1").
    model = _fitted(model_class, stream)
    model.save(tmp_path / "model")
    users, items = np.unique(stream.user)[:12], np.unique(stream.item)[:20]
    alone = model.recommend(users, k=5).items, model.score(users, items)
    served = Recommender.load(tmp_path / "model")  # as the service holds it: no cache built
    answers, failures = [], []

    def read() -> None:
        try:
            for _ in range(15):
                answers.append((served.recommend(users, k=5).items, served.score(users, items)))
                served.explain(users[0], items[0])
        except Exception as error:  # collected, then shown by the assertion
            failures.append(repr(error))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as it can be
    try:
        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert not failures and len(answers) == 60, failures[:3]
    for ranked, scores in answers:
        assert np.array_equal(ranked, alone[0])
        np.testing.assert_allclose(scores, alone[1], rtol=1e-5, atol=1e-6)


def test_save_then_load_gives_identical_results(model_class, stream, tmp_path):
    model = _fitted(model_class, stream)
    model.learn(stream.take(slice(1_000, 1_100)))
    model.save(tmp_path / "model")
    loaded = Recommender.load(tmp_path / "model")
    assert type(loaded) is model_class and loaded.get_params() == model.get_params()
    users = np.append(np.unique(stream.user), "never-seen")
    items = np.unique(stream.item)
    assert np.array_equal(loaded.score(users, items), model.score(users, items), equal_nan=True)
    assert np.array_equal(loaded.recommend(users, k=7).items, model.recommend(users, k=7).items)
    assert loaded.explain(users[0], items[1]) == model.explain(users[0], items[1])
    # and both keep learning alike
    more = stream.take(slice(1_100, 1_300))
    model.learn(more)
    loaded.learn(more)
    np.testing.assert_allclose(
        loaded.score(users, items), model.score(users, items), rtol=1e-4, atol=1e-5
    )


def test_load_refuses_another_model_class(model_class, stream, tmp_path):
    _fitted(model_class, stream).save(tmp_path / "model")
    other = next(cls for _, cls in MODELS if cls is not model_class)
    with pytest.raises(ValueError, match=f"holds a {model_class.__name__}"):
        other.load(tmp_path / "model")


def test_same_seed_same_model(model_class, stream):
    first, second = _fitted(model_class, stream), _fitted(model_class, stream).clone()
    second.fit(stream.take(slice(0, 1_000)))
    for model in (first, second):
        for start in range(1_000, 1_200, 50):
            model.learn(stream.take(slice(start, start + 50)))
    users, items = np.unique(stream.user), np.unique(stream.item)
    assert np.array_equal(first.score(users, items), second.score(users, items), equal_nan=True)


def test_new_users_and_items_are_learned_on_the_fly(model_class, stream):
    model = _fitted(model_class, stream)
    old_item = stream.item[0]
    t = float(stream.timestamp.max()) + 60
    model.learn(
        EventBatch.from_columns(
            ["brand-new-user", "brand-new-user", stream.user[0]],
            ["brand-new-item", old_item, "brand-new-item"],
            [t, t + 1, t + 2],
            "purchase",
        )
    )
    recs = model.recommend(["brand-new-user"], k=10)
    assert not recs.fallback[0]
    assert {"brand-new-item", old_item}.isdisjoint(recs.items[0])  # seen items excluded
    someone = np.setdiff1d(np.unique(stream.user), [stream.user[0]])[0]
    only_new = model.recommend([someone], k=1, candidates=["brand-new-item"])
    assert only_new.items.tolist() == [["brand-new-item"]]
    assert np.isfinite(model.score([someone], ["brand-new-item"])).all()


def test_learning_one_event_at_a_time_and_before_any_fit(model_class, stream):
    model = _new(model_class)
    for row in range(5):
        model.learn(stream.take(slice(row, row + 1)))
    assert len(model.items_) >= 1
    assert model.recommend([stream.user[0]], k=3).items.shape == (1, 3)


def test_recommend_never_returns_seen_items_and_is_sorted(model_class, stream):
    train = stream.take(slice(0, 1_000))
    model = _fitted(model_class, stream)
    users = np.unique(train.user)
    recs = model.recommend(users, k=10)
    positive = train.weight > 0
    seen = {(u, i) for u, i in zip(train.user[positive], train.item[positive], strict=True)}
    for row, user in enumerate(recs.users):
        listed = [item for item in recs.items[row] if item]
        assert not any((user, item) in seen for item in listed)
        assert len(set(listed)) == len(listed)
        kept = recs.scores[row][: len(listed)]
        assert np.all(np.diff(kept) <= 0)


def test_unknown_users_get_the_fallback_and_unknown_items_nan(model_class, stream):
    model = _fitted(model_class, stream)
    recs = model.recommend(["nobody", stream.user[0]], k=5)
    assert recs.fallback.tolist() == [True, False]
    popularity_order = np.argsort(-model.popularity_.counts, kind="stable")[:5]
    assert set(recs.items[0]) == set(model.items_.ids(popularity_order))
    scores = model.score(["nobody"], [stream.item[0], "no-such-item"])
    assert np.isfinite(scores[0, 0]) and np.isnan(scores[0, 1])
    cold = model.explain("nobody", stream.item[0])
    assert cold.fallback and cold.method == "decayed popularity"
    assert [r.kind for r in cold.reasons] == ["popularity"]
    assert cold.reasons[0].weight == pytest.approx(cold.score) and cold.rest == pytest.approx(0)
    unknown = model.explain(stream.user[0], "no-such-item")
    assert unknown.method == "unknown item" and unknown.reasons == () and np.isnan(unknown.score)


def test_candidates_and_short_lists(model_class, stream):
    model = _fitted(model_class, stream)
    candidates = [*np.unique(stream.item)[:3].tolist(), "not-an-item"]
    recs = model.recommend([stream.user[0], "nobody"], k=10, candidates=candidates)
    assert recs.items.shape == (2, 10)
    for row in range(2):
        listed = [item for item in recs.items[row] if item]
        assert set(listed) <= set(candidates[:3])
        assert (recs.scores[row][len(listed) :] == -np.inf).all()
    assert model.recommend(["nobody"], k=3, candidates=[]).items.tolist() == [["", "", ""]]


def test_explanations_name_history_items(model_class, stream):
    model = _fitted(model_class, stream)
    user = stream.user[0]
    recs = model.recommend([user], k=1)
    explanation = model.explain(user, recs.items[0][0])
    assert explanation.user == user and np.isfinite(explanation.score)
    assert explanation.score == pytest.approx(float(recs.scores[0, 0]), rel=1e-5)
    assert explanation.model_version == model.version == f"{model.name}-1"
    history = set(stream.item[:1_000][(stream.user[:1_000] == user) & (stream.weight[:1_000] > 0)])
    assert {r.item for r in explanation.reasons if r.item is not None} <= history
    assert all(r.kind in REASON_KINDS and r.text for r in explanation.reasons)
    weights = [abs(r.weight) for r in explanation.reasons]
    assert weights == sorted(weights, reverse=True) and len(weights) <= 5
    total = sum(r.weight for r in explanation.reasons) + explanation.rest
    assert total == pytest.approx(explanation.score, rel=1e-6, abs=1e-6)


def test_recommend_explains_every_item_as_explain_does(model_class, stream):
    model = _fitted(model_class, stream)
    users = [stream.user[0], stream.user[1], "nobody"]
    recs = model.recommend(users, k=4, explain=True, reasons=2)
    assert model.recommend(users, k=4).explanations is None
    for row, user in enumerate(users):
        explained = [(e.item, pytest.approx(e.score, rel=1e-5)) for e in recs.explanations[row]]
        assert explained == recs.for_user(row)
        for explanation in recs.explanations[row]:
            single = model.explain(user, explanation.item, top=2)
            assert [r.text for r in explanation.reasons] == [r.text for r in single.reasons]
            assert [r.weight for r in explanation.reasons] == pytest.approx(
                [r.weight for r in single.reasons], rel=1e-4, abs=1e-6
            )
            assert explanation.fallback == (user == "nobody")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.recommend(["u"], k=0), ValueError, "k must be a positive integer"),
        (lambda m: m.recommend(["u"], k=2.5), ValueError, "k must be a positive integer"),
        (lambda m: m.recommend(["u"], k=True), ValueError, "k must be a positive integer"),
        (lambda m: m.recommend("u00001"), ValueError, "users must be a sequence of ids"),
        (lambda m: m.recommend([None]), ValueError, "users: None is not an id"),
        (lambda m: m.score(["u"], "i"), ValueError, "items must be a sequence of ids"),
        (lambda m: m.explain("u", "i", top=0), ValueError, "top must be a positive integer"),
        (lambda m: m.recommend(["u"], reasons=0), ValueError, "reasons must be a positive"),
        (lambda m: m.explain_many(["u"], ["i"]), ValueError, r"items: expected shape \(1, k\)"),
        (lambda m: m.explain("u", "i", wording="x"), TypeError, "wording must be a Wording"),
        (lambda m: m.fit([("u", "i")]), TypeError, "events must be an EventBatch"),
        (lambda m: m.learn(None), TypeError, "events must be an EventBatch"),
    ],
)
def test_bad_arguments_raise_clear_errors(model_class, stream, call, error, message):
    model = _fitted(model_class, stream)
    with pytest.raises(error, match=message):
        call(model)


def test_an_untrained_model_says_so(model_class):
    with pytest.raises(RuntimeError, match="has not learned anything yet"):
        _new(model_class).recommend(["u"])


# ------------------------------------------------------------------------------ policies
#
# The contract every exploration policy keeps, run for every registered policy: its learned
# state and random generator survive save and load (and copy), so that it goes on deciding
# exactly as before.

POLICIES = sorted(registered_policies().items())


@pytest.fixture(params=[cls for _, cls in POLICIES], ids=[name for name, _ in POLICIES])
def policy_class(request) -> type[Policy]:
    return request.param


def policy_inputs(n: int, m: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "users": [f"u{i}" for i in range(n)],
        "candidates": [f"i{j}" for j in range(m)],
        "scores": rng.normal(size=(n, m)),
        "user_features": rng.normal(size=(n, 2)),
        "item_features": rng.normal(size=(m, 3)),
    }


def _rewards(decisions: Decisions, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, size=decisions.slates.shape).astype(float)
    rewards[rng.random(rewards.shape) < 0.3] = np.nan
    return rewards


def _trained_policy(policy_class: type[Policy]) -> Policy:
    """A policy with learned state and a generator well past its seed."""
    policy = policy_class(k=3, uniform_share=0.2, seed=11)
    for batch in range(3):
        decisions = policy.decide(**policy_inputs(8, 9, batch))
        policy.update(decisions, _rewards(decisions, batch))
    return policy


def _saved(policy: Policy, folder) -> tuple[dict, dict[str, np.ndarray]]:
    policy.save(folder)
    with np.load(folder / "arrays.npz", allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return json.loads((folder / "policy.json").read_text()), arrays


def _same_decisions(a: Decisions, b: Decisions) -> bool:
    return (
        np.array_equal(a.users, b.users)
        and np.array_equal(a.slates, b.slates)
        and np.array_equal(a.propensities, b.propensities)
        and np.array_equal(a.explored, b.explored)
        and np.array_equal(a.exploring, b.exploring)
        and (a.features is None) == (b.features is None)
        and (a.features is None or np.array_equal(a.features, b.features))
        and (a.policy, a.params, a.model_version) == (b.policy, b.params, b.model_version)
    )


def _decide_twice_alike(first: Policy, second: Policy) -> None:
    """Both decide alike, then learn the same rewards and decide alike again (also for a
    per-call k and for marginals, which draw from the generator too)."""
    inputs = policy_inputs(7, 10, seed=40)
    one, two = first.decide(**inputs), second.decide(**inputs)
    assert _same_decisions(one, two)
    first.update(one, _rewards(one, 41))
    second.update(two, _rewards(two, 41))
    assert _same_decisions(first.decide(**inputs, k=5), second.decide(**inputs, k=5))
    assert np.array_equal(first.marginals(**inputs), second.marginals(**inputs))
    assert _same_decisions(first.decide(**inputs), second.decide(**inputs))


def test_policy_state_equal_after_save_and_load(policy_class, tmp_path):
    policy = _trained_policy(policy_class)
    manifest, arrays = _saved(policy, tmp_path / "before")
    assert manifest["name"] == policy.name and manifest["params"] == policy.get_params()
    loaded = Policy.load(tmp_path / "before")
    assert type(loaded) is policy_class and loaded.get_params() == policy.get_params()
    assert loaded._rng.bit_generator.state == policy._rng.bit_generator.state
    manifest_again, arrays_again = _saved(loaded, tmp_path / "after")
    assert manifest_again == manifest
    assert arrays.keys() == arrays_again.keys()
    for name in arrays:
        assert arrays[name].dtype == arrays_again[name].dtype, name
        assert np.array_equal(arrays[name], arrays_again[name]), name


def test_policy_decides_identically_after_load(policy_class, tmp_path):
    policy = _trained_policy(policy_class)
    policy.save(tmp_path / "policy")
    loaded = policy_class.load(tmp_path / "policy")
    _decide_twice_alike(policy, loaded)


def test_policy_untrained_round_trip(policy_class, tmp_path):
    policy = policy_class(k=2, seed=3)
    policy.save(tmp_path / "policy")
    _decide_twice_alike(policy, Policy.load(tmp_path / "policy"))


def test_policy_copy_and_deepcopy_decide_identically_and_independently(policy_class):
    policy = _trained_policy(policy_class)
    twin, deep = policy.copy(), copy.deepcopy(policy)
    assert type(twin) is type(deep) is policy_class
    before = {name: array.copy() for name, array in policy._get_state().items()}
    _decide_twice_alike(twin, deep)  # learning on the copies ...
    after = policy._get_state()  # ... leaves the original as it was
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[name], after[name]) for name in before)
    _decide_twice_alike(policy, policy.copy())


def test_policy_load_refuses_another_policy_class(policy_class, tmp_path):
    _trained_policy(policy_class).save(tmp_path / "policy")
    other = next(cls for _, cls in POLICIES if not issubclass(policy_class, cls))
    with pytest.raises(ValueError, match=f"holds a '{policy_class.name}' policy"):
        other.load(tmp_path / "policy")


def test_policy_honours_an_allowed_mask(policy_class):
    """Every policy decides for users whose allowed candidates differ in one call (serve's
    pools): nothing outside the mask is shown or has a propensity, and a mask that allows
    everything decides exactly as no mask."""
    policy = _trained_policy(policy_class)
    inputs = policy_inputs(200, 9, seed=50)
    allowed = np.random.default_rng(51).random((200, 9)) < 0.5
    allowed[:, :3] = True  # at least k=3 per user
    decisions = policy.copy().decide(**inputs, allowed=allowed)
    shown = np.char.lstrip(decisions.slates.astype(str), "i").astype(int)  # "i7" -> 7
    assert np.take_along_axis(allowed, shown, axis=1).all()
    assert (decisions.propensities > 0).all()
    marginals = policy.copy().marginals(**inputs, allowed=allowed)
    assert (marginals[~allowed] == 0).all()
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, atol=1e-9)
    everything = np.ones((200, 9), dtype=bool)
    assert _same_decisions(
        policy.copy().decide(**inputs, allowed=everything), policy.copy().decide(**inputs)
    )
