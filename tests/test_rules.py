"""Sequential rules: the rule weights and scores checked by hand, direction kept, and a stream
learned batch by batch equal to ``fit`` on the whole of it."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.models import SequentialRules


def _events(users: list[str], items: list[str]) -> EventBatch:
    return EventBatch.from_columns(users, items, 1.7e9 + np.arange(len(users), dtype=float))


def test_rules_and_scores_by_hand() -> None:
    # u: a, b, c (then a repeat of a, which moves a to the front but adds no rule);
    # rules a->b 1, b->c 1, a->c 1/2; out a 1.5, b 1
    model = SequentialRules(window=3, recency_decay=0.5, shrink=1.0)
    model.fit(_events(["u", "u", "u", "u", "v"], ["a", "b", "c", "a", "a"]))
    index = {item: int(model.items_.lookup([item])[0]) for item in "abc"}
    rules = model.rules_.tocsr().toarray()
    assert rules[index["a"], index["b"]] == 1.0
    assert rules[index["a"], index["c"]] == 0.5
    assert rules[index["b"], index["c"]] == 1.0
    assert rules.sum() == 2.5  # nothing else: the repeat of a adds no rule, v's first item none
    np.testing.assert_allclose(model.out_[[index["a"], index["b"]]], [1.5, 1.0])
    # v's window: a. Scores: b 1 / (1.5 + 1), c 0.5 / 2.5
    np.testing.assert_allclose(model.score(["v"], ["b", "c"])[0], [0.4, 0.2], rtol=1e-6)
    # u's window: a, c, b (a repeated last). c: 1 * a->c / 2.5 + 0.25 * b->c / 2
    np.testing.assert_allclose(model.score(["u"], ["c"])[0, 0], 0.5 / 2.5 + 0.25 * 1 / 2, rtol=1e-6)


def test_a_rule_has_a_direction() -> None:
    model = SequentialRules()
    model.fit(_events(["u1", "u1", "u2", "u2", "u3"], ["phone", "case", "phone", "case", "case"]))
    # u3 just took a case: nothing is known to follow a case, so phone scores nothing
    assert model.score(["u3"], ["phone"])[0, 0] == 0.0
    # u1's window: case, then phone (one step back, weight 0.5); phone -> case twice, out 2
    explanation = model.explain("u1", "case")
    assert explanation.score == pytest.approx(0.5 * 2 / (2 + 1), rel=1e-6)
    assert [reason.item for reason in explanation.reasons] == ["phone"]


def test_learning_batch_by_batch_equals_fit() -> None:
    events = synthetic_stream(n_users=40, n_items=30, n_events=1_200, seed=3).events
    whole = SequentialRules(window=4).fit(events)
    parts = SequentialRules(window=4).fit(events.take(slice(0, 100)))
    for start in range(100, len(events), 37):
        parts.learn(events.take(slice(start, start + 37)))
    users, items = np.unique(events.user), np.unique(events.item)
    np.testing.assert_allclose(parts.score(users, items), whole.score(users, items), rtol=1e-5)
    order = parts.users_.lookup(whole.users_.to_array())
    item_map = parts.items_.lookup(whole.items_.to_array())
    recent = parts.recent_[order]
    mapped = np.where(recent >= 0, np.argsort(item_map)[np.maximum(recent, 0)], -1)
    np.testing.assert_array_equal(mapped, whole.recent_)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="window"):
        SequentialRules(window=0)
    with pytest.raises(ValueError, match="recency_decay"):
        SequentialRules(recency_decay=0.0)
    with pytest.raises(ValueError, match="shrink"):
        SequentialRules(shrink=-1.0)
