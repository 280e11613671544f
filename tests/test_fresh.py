"""``fresh`` (issue #15, part 4): never-seen catalogue items ranked against known items by a
calibrated chance. (The conformance suite runs it like every model.)"""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.models import Fresh, ItemTexts, Recommender, parse_model
from lifelong_rec.models.fresh import _CALIBRATION_BINS, NewItemPrior, RankRates
from lifelong_rec.models.text import release_years

START = 978_307_200.0  # 2001-01-01, UTC
EXPLORERS = [f"x{u}" for u in range(5)]
REGULARS = [f"r{u}" for u in range(25)]
KNOWN = [f"k{j}" for j in range(100)]
ALPHA = [f"a{j}" for j in range(300)]
BETA = [f"b{j}" for j in range(300)]


def _catalog(reverse: bool = False) -> Catalog:
    records = (
        [{"item": i, "title": f"Office comedy {j} (1999)", "categories": ["Comedy"]}
         for j, i in enumerate(KNOWN)]
        + [{"item": i, "title": f"Space saga {j} (2001)", "categories": ["Sci-Fi"]}
           for j, i in enumerate(ALPHA)]
        + [{"item": i, "title": f"Quiet drama {j} (2001)", "categories": ["Drama"]}
           for j, i in enumerate(BETA)]
        + [{"item": "a-future", "title": "Space saga return (2003)", "categories": ["Sci-Fi"]}]
    )  # fmt: skip
    return Catalog.from_records(records[::-1] if reverse else records)


def _stream(n_events: int = 1_500, seed: int = 0) -> EventBatch:
    """Regular users pick known comedies; explorers (a sixth of the events) pick a
    never-seen space saga nine times in ten. The dramas, as new as the sagas, are never
    picked."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    fresh = list(rng.permutation(ALPHA))
    for _ in range(n_events):
        explorer = rng.random() < 1 / 6
        user = EXPLORERS[rng.integers(5)] if explorer else REGULARS[rng.integers(25)]
        if explorer and rng.random() < 0.9 and len(fresh) > 60:
            items.append(fresh.pop())
        else:
            items.append(KNOWN[rng.integers(len(KNOWN))])
        users.append(user)
    return EventBatch.from_columns(users, items, START + 3_600.0 * np.arange(n_events), "click")


def _trained(inner: str = "mf(factors=8, iterations=3)", reverse: bool = False) -> Fresh:
    events = _stream()
    model = Fresh(inner=inner, text_encoder="hashing(dim=64)", depth=30, sample=128)
    model.add_items(_catalog(reverse)).fit(events.take(slice(0, 500)))
    for start in range(500, len(events), 100):
        model.learn(events.take(slice(start, start + 100)))
    return model


@pytest.fixture(scope="module")
def trained() -> Fresh:
    return _trained()


def test_fresh_items_of_the_picked_genre_reach_the_users_who_pick_them(trained):
    events = _stream()
    picked = set(events.item.tolist())
    never_seen = [i for i in ALPHA if i not in picked]
    assert len(never_seen) >= 50
    top = trained.recommend(EXPLORERS + REGULARS, k=10).items
    listed = set(top.ravel().tolist())
    # every explorer gets a fresh space saga in its top 10 ...
    assert all(any(i in never_seen for i in row) for row in top[: len(EXPLORERS)])
    # ... no one gets a drama (as new, never picked) or the saga released in 2003
    assert listed.isdisjoint(BETA) and "a-future" not in listed
    assert trained.score(EXPLORERS, ["a-future"]).max() == -np.inf
    # regular users keep the inner model's list, in its order
    inner_top = trained.inner_.recommend(REGULARS, k=10).items
    np.testing.assert_array_equal(top[len(EXPLORERS) :], inner_top)
    # the inner model alone never lists a never-seen item: it does not know them
    inner_listed = trained.inner_.recommend(EXPLORERS + REGULARS, k=10).items
    assert set(inner_listed.ravel().tolist()).isdisjoint(never_seen)
    assert np.isnan(trained.inner_.score(EXPLORERS, never_seen)).all()


def test_new_items_go_between_known_items_whose_scores_stay_the_inner_models(trained):
    users = EXPLORERS[:2]
    scores = trained.score(users, KNOWN)
    np.testing.assert_array_equal(scores, trained.inner_.score(users, KNOWN))
    everything = trained.recommend(users, k=len(trained.items_))
    for row in range(len(users)):
        listed = everything.items[row].tolist()
        seen = trained.prior_.seen_[trained.items_.lookup(listed)]
        known = [i for i, old in zip(listed, seen, strict=True) if old]
        expected = trained.inner_.recommend([users[row]], k=len(known)).items[0].tolist()
        assert known == expected  # insertions keep the known items' order
        # the explorers' first picks are this year's sagas: they come first
        assert listed[0] in ALPHA and listed.index(known[0]) > 10


def test_the_chances_are_calibrated_on_the_stream(trained):
    prior = trained.prior_
    # the sagas' text is what the users picking new items pick: a positive weight on the
    # similarity to recent first picks, and observed picks close to the summed chances
    assert prior.coef_[1] > 0
    assert prior.observed_.sum() == pytest.approx(prior.expected_.sum(), rel=0.5)
    # the explorers' bucket of the rank rates learned that known items rarely come next
    rates = trained.rates_.rates()
    explorer_bucket = trained._bucket(trained.users_.lookup(EXPLORERS))
    regular_bucket = trained._bucket(trained.users_.lookup(REGULARS))
    assert rates[explorer_bucket, 0].max() < rates[regular_bucket, 0].min()


def test_no_use_of_the_catalogues_order():
    forward, backward = _trained(), _trained(reverse=True)
    items = KNOWN + ALPHA + BETA
    users = EXPLORERS + REGULARS
    # equal up to the order of float sums over the candidates
    np.testing.assert_allclose(forward.score(users, items), backward.score(users, items),
                               rtol=1e-4)  # fmt: skip
    np.testing.assert_array_equal(
        forward.recommend(users, k=10).items, backward.recommend(users, k=10).items
    )


def test_a_new_items_explanation_says_why(trained):
    fresh = trained.recommend(EXPLORERS[:1], k=3).items[0].tolist()
    unseen = trained.inner_.recommend(EXPLORERS[:1], k=3).items[0].tolist()
    (explained,) = trained.explain_many(EXPLORERS[:1], [fresh + unseen])
    new = [e for e in explained if e.item in ALPHA]
    known = [e for e in explained if e.item in KNOWN]
    assert len(new) == len(known) == 3
    for explanation in new:
        assert explanation.method.startswith("new item")
        assert "estimated chance" in explanation.method
        total = sum(r.weight for r in explanation.reasons) + explanation.rest
        assert total == pytest.approx(explanation.score, rel=1e-6)
        for reason in explanation.reasons:
            assert reason.kind == "text" and reason.weight > 0
            assert reason.item in set(_stream().item[_stream().user == EXPLORERS[0]].tolist())
    for explanation in known:  # delegated to the inner model, under the wrapper's version
        inner = trained.inner_.explain(EXPLORERS[0], explanation.item, top=3)
        assert explanation.method == inner.method
        assert [(r.kind, r.item, r.text) for r in explanation.reasons] == [
            (r.kind, r.item, r.text) for r in inner.reasons
        ]
        assert [r.weight for r in explanation.reasons] == pytest.approx(
            [r.weight for r in inner.reasons], rel=1e-6
        )
        assert explanation.model_version == trained.version


def test_saving_and_loading_keep_the_prior_and_the_catalogue(trained, tmp_path):
    trained.save(tmp_path / "fresh")
    loaded = Recommender.load(tmp_path / "fresh")
    assert isinstance(loaded, Fresh)
    for name, value in trained.prior_.state().items():
        np.testing.assert_array_equal(loaded.prior_.state()[name], value, err_msg=name)
    np.testing.assert_array_equal(loaded.rates_.rates(), trained.rates_.rates())
    users = EXPLORERS + REGULARS
    np.testing.assert_array_equal(
        loaded.recommend(users, k=10).items, trained.recommend(users, k=10).items
    )
    # the catalogue survives a refit of the loaded model
    loaded.fit(_stream().take(slice(0, 200)))
    assert set(ALPHA) <= set(loaded.items_.to_array().tolist())


def test_add_items_takes_texts_with_their_years():
    texts = ItemTexts.encode(_catalog(), "hashing(dim=32)")  # what with_catalog passes
    model = Fresh(inner="pop", text_encoder="hashing(dim=32)").add_items(texts)
    row = model._catalog.lookup(["a-future"])[0]
    assert model._catalog_release[row] == 2003
    model.add_items(ItemTexts(texts.items, texts.embeddings, texts.encoder))  # no years: kept
    assert model._catalog_release[row] == 2003
    with pytest.raises(ValueError, match="encoded with 'hashing\\(dim=64\\)'"):
        model.add_items(ItemTexts.encode(_catalog(), "hashing(dim=64)"))
    with pytest.raises(TypeError, match="items must be a Catalog or ItemTexts"):
        model.add_items(["a0"])


def test_release_years_from_titles_and_attributes():
    catalog = Catalog.from_records([
        {"item": "1", "title": "Heat (1995)"},
        {"item": "2", "title": "Cosmos (1980-1981)"},
        {"item": "3", "title": "Up", "attributes": {"year": 2009}},
        {"item": "4", "title": "1984", "attributes": {"release_date": "1956-03-06"}},
        {"item": "5", "title": "No year"},
    ])  # fmt: skip
    np.testing.assert_array_equal(release_years(catalog), [1995.0, 1980.0, 2009.0, 1956.0, np.nan])


def test_rank_rates_fit_a_falling_curve():
    rates = RankRates(depth=50, buckets=2)
    rng = np.random.default_rng(0)
    truth = 0.02 * np.arange(1.0, 51.0) ** -0.7
    ranks = rng.choice(np.append(np.arange(1.0, 51.0), np.inf), size=200_000,
                       p=np.append(truth, 1.0 - truth.sum()))  # fmt: skip
    rates.add(np.zeros(len(ranks), dtype=np.int64), ranks)
    fitted = rates.rates()
    assert np.all(np.diff(fitted, axis=1) <= 0)
    np.testing.assert_allclose(fitted[0], truth, rtol=0.15)
    # no evidence: the cautious prior, 0.05 / rank
    np.testing.assert_allclose(fitted[1], 0.05 / np.arange(1.0, 51.0), rtol=1e-9)


def test_inner_model_learns_as_alone():
    events = _stream(600)
    wrapped = Fresh(inner="mf(factors=8, iterations=3)", text_encoder="hashing(dim=32)")
    wrapped.add_items(_catalog()).fit(events.take(slice(0, 300)))
    alone = parse_model("mf(factors=8, iterations=3)")[1]().fit(events.take(slice(0, 300)))
    for start in range(300, 600, 100):
        wrapped.learn(events.take(slice(start, start + 100)))
        alone.learn(events.take(slice(start, start + 100)))
    users = REGULARS
    np.testing.assert_allclose(wrapped.inner_.score(users, KNOWN), alone.score(users, KNOWN),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"inner": "nope"}, "inner: unknown model 'nope'"),
        ({"inner": "fresh(inner='pop')"}, "inner: expected a model spec other than 'fresh'"),
        ({"inner": "mf(factors=0)"}, "inner: .*factors"),
        ({"text_encoder": "nope"}, "text_encoder: unknown text encoder"),
        ({"half_life_days": 0}, "half_life_days must be a finite number > 0"),
        ({"rate_half_life_days": float("inf")}, "rate_half_life_days must be a finite"),
        ({"user_decay": 1.0}, r"user_decay must be in \(0, 1\)"),
        ({"learning_rate": -0.1}, "learning_rate must be finite and >= 0"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"sample": 2.5}, "sample must be a positive integer"),
    ],
)
def test_bad_parameters_raise_naming_them(params, message):
    with pytest.raises(ValueError, match=message):
        Fresh(**params)


def test_the_priors_record_of_a_batch_is_its_events_one_by_one():
    """Users' recent texts and shares decay per event: a batch with repeated users leaves
    them as the same events recorded one at a time, users and items growing as they come.
    (One timestamp for all: what decays with time decays per batch, by design.)"""
    rng = np.random.default_rng(3)
    n_users, n_items, dim = 7, 40, 16
    users = rng.integers(n_users, size=60)
    items = rng.integers(n_items, size=60)
    times = np.full(60, START)
    texts = rng.normal(size=(n_items, dim)).astype(np.float32)
    priors = [NewItemPrior(dim=dim), NewItemPrior(dim=dim)]
    for prior in priors:
        prior.grow(1, 1)
    batched, single = priors
    batched.grow(n_users, n_items)
    batched.describe(np.arange(n_items), texts, np.full(n_items, np.nan))
    batched.observe(users, items, times, np.zeros(60, dtype=bool), n_items)
    for j in range(60):  # a new user or item at a time, as a stream brings them
        single.grow(max(len(single.profile_), users[j] + 1), max(len(single.seen_), items[j] + 1))
        single.describe(np.arange(len(single.seen_)), texts[: len(single.seen_)],
                        np.full(len(single.seen_), np.nan))  # fmt: skip
        single.observe(users[j : j + 1], items[j : j + 1], times[j : j + 1], np.zeros(1, bool),
                       len(single.seen_))  # fmt: skip
    single.grow(n_users, n_items)
    for name in ("profile", "newness", "discovery", "overall", "seen"):
        assert np.allclose(batched.state()[name], single.state()[name], atol=1e-5), name


def test_the_kept_similarity_to_recent_first_picks_follows_every_change():
    """The prior keeps every item's similarity to the recent first picks between changes
    (a pass over the whole catalogue per request otherwise): after first picks, decay,
    repeat events, new texts and new items, the chances it gives are those of a prior that
    computes everything afresh (a loaded copy keeps nothing)."""
    rng = np.random.default_rng(5)
    n_users, n_items, dim = 6, 30, 16
    prior = NewItemPrior(dim=dim)
    prior.grow(n_users, n_items)
    prior.describe(np.arange(n_items), rng.normal(size=(n_items, dim)).astype(np.float32),
                   np.full(n_items, np.nan))  # fmt: skip
    users = np.arange(n_users)
    steps = [(0, 3, 0.0), (1, 3, 0.0), (2, 4, 60.0), (3, 5, 60.0), (4, 3, 7_200.0)]
    for user, item, later in steps:  # first picks, a repeat, the same second, decay
        prior.chances(users, START + later)  # served: the similarity is kept
        prior.observe(np.array([user]), np.array([item]), np.array([START + later]),
                      np.ones(1, dtype=bool), n_items)  # fmt: skip
        afresh = NewItemPrior(dim=dim)
        afresh.set_state(prior.state())
        for got, expected in zip(prior.chances(users, START + later),
                                 afresh.chances(users, START + later), strict=True):  # fmt: skip
            np.testing.assert_array_equal(got, expected)
    prior.chances(users, START)
    prior.describe(np.array([7]), rng.normal(size=(1, dim)).astype(np.float32), np.array([np.nan]))
    prior.grow(n_users, n_items + 2)  # new items, without text
    afresh = NewItemPrior(dim=dim)
    afresh.set_state(prior.state())
    np.testing.assert_array_equal(prior.discovered(), afresh.discovered())
    assert len(prior.discovered()) == n_items + 2


def test_the_new_item_boost_moves_new_items_up_and_says_so(trained, tmp_path):
    """Exploring new items places them as if their chance were ``new_item_boost`` times the
    estimate: never lower than without it, higher where a known item stood between; the
    known items keep their scores and order, and the explanation names the boost."""
    users = trained.users_.lookup(REGULARS)
    plain = trained._placed(users)[1]
    trained.save(tmp_path / "fresh")
    boosted_model = Recommender.load(tmp_path / "fresh")
    assert isinstance(boosted_model, Fresh)
    boosted_model.new_item_boost = 1e4
    boosted = boosted_model._placed(users)[1]
    np.testing.assert_array_equal(boosted["chances"], plain["chances"])  # the estimate
    assert (boosted["rank"] <= plain["rank"]).all() and (boosted["rank"] < plain["rank"]).any()
    np.testing.assert_array_equal(
        boosted_model.score(REGULARS, KNOWN), trained.score(REGULARS, KNOWN)
    )
    item = boosted_model.recommend(REGULARS[:1], k=1).items[0, 0]
    assert item in ALPHA  # the boost took a saga above every known item
    assert "10000 times" in boosted_model.explain(REGULARS[0], item).method
    with pytest.raises(ValueError, match="new_item_boost must be a finite number > 0"):
        Fresh(new_item_boost=0.0)


def _sums_from_features(prior, users, items, years, first, known):
    """What a step of the prior learns, from the chances and features serving uses
    (:meth:`NewItemPrior.features`, :meth:`NewItemPrior.log_rates`), as (n, C) arrays."""
    candidates = prior.candidates(float(years.max()), known)
    bucket, x = prior.features(users, candidates, years)
    valid = ~(prior.release_[candidates][None, :] > years[:, None])
    chance = np.exp(prior.log_rates(bucket, x)) * valid
    picked = first[:, None] & (candidates[None, :] == items[:, None]) & valid
    n_ages, n_bins = len(prior.picks_), len(prior.expected_)
    bins = np.searchsorted(_CALIBRATION_BINS, np.log10(np.maximum(chance, 1e-300)))
    return (
        x[picked].sum(axis=0) - np.einsum("nc,nck->k", chance, x),
        np.bincount(bucket.ravel(), (np.exp(np.minimum(x @ prior.coef_, 50.0)) * valid).ravel(),
                    minlength=n_ages),
        np.bincount(bucket[picked], minlength=n_ages).astype(np.float64),
        np.bincount(bins.ravel(), chance.ravel(), minlength=n_bins),
        np.bincount(bins[picked], minlength=n_bins).astype(np.float64),
    )  # fmt: skip


def test_a_priors_step_takes_the_sums_of_the_chances_it_serves():
    """The compiled step (one pass over event-candidate pairs) learns exactly what the
    serving formulas give: the gradient, the exposures and picks per age bucket and the
    calibration sums, with items of unknown age, items released after some events' years,
    items without text, first picks that were and were not candidates, and several events
    of one user."""
    rng = np.random.default_rng(11)
    n_users, n_items, dim = 9, 200, 16
    prior = NewItemPrior(dim=dim)
    prior.grow(n_users, n_items)
    texts = rng.normal(size=(n_items, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    texts[::9] = 0.0  # no text
    release = rng.integers(1985, 2004, n_items).astype(np.float64)
    release[::7] = np.nan  # unknown age
    prior.describe(np.arange(n_items), texts, release)
    now = START
    for _ in range(4):  # a history: recent items, first picks, a trained coefficient vector
        users, items = rng.integers(n_users, size=12), rng.integers(n_items, size=12)
        prior.observe(users, items, np.full(12, now), np.ones(12, dtype=bool), n_items)
        now += 86_400.0 * 200
    users = np.array([0, 3, 3, 5, 8, 1])
    items = np.array([150, 151, 2, 199, 180, 60])
    first = np.array([True, True, False, True, True, True])
    years = np.array([2001.0, 2001.0, 2001.0, 2003.0, 1999.0, 2002.0])  # some releases later
    got = prior.step_sums(users, items, years, first, n_items - 10)  # the last 10: arrived now
    expected = _sums_from_features(prior, users, items, years, first, n_items - 10)
    assert got[2].sum() >= 2  # first picks among the candidates were found
    for name, a, b in zip(("gradient", "exposure", "picks", "expected", "observed"), got,
                          expected, strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=name)
