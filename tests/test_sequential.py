"""SequentialTransformer's own behaviour: sequence bookkeeping, the sequence as the user state,
cold start through text, losses and optimisers, distillation, integrated gradients, growth.

The generic contract (save/load, purity, determinism, new ids, errors) is in test_conformance.
Models here are tiny (max_len 8, dim 16, one layer) and run on one CPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from lifelong_rec.events import Catalog, EventBatch  # noqa: E402
from lifelong_rec.models.sequential import (  # noqa: E402
    SequentialTransformer,
    _append_in_place,
    _windows,
)
from lifelong_rec.models.text import ItemTexts  # noqa: E402

T0 = 1.7e9
MAX_LEN = 8


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(**overrides: object) -> SequentialTransformer:
    params = {"max_len": MAX_LEN, "dim": 16, "layers": 1, "heads": 2, "dropout": 0.1,
              "epochs": 20, "batch_size": 32, "text_encoder": None, "device": "cpu"}  # fmt: skip
    return SequentialTransformer(**(params | overrides))


def _cyclic_stream(n_users: int = 40, n_items: int = 20, length: int = 14) -> EventBatch:
    """User ``u{k}`` walks the items i0, i1, ..., i{n_items - 1}, i0, ... from a random start,
    one item a minute: the next item is always the one after the last."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(n_users):
        start = int(rng.integers(n_items))
        for step in range(length):
            users.append(f"u{user}")
            items.append(f"i{(start + step) % n_items}")
            times.append(T0 + 60 * step + user)
    return EventBatch.from_columns(users, items, times)


def _next_item_accuracy(model: SequentialTransformer, stream: EventBatch, n_items: int) -> float:
    """Share of users whose top-scored item is the one after their last in the cycle."""
    users = np.unique(stream.user)
    last = [int(stream.item[stream.user == user][-1][1:]) for user in users]
    expected = model.items_.lookup([f"i{(item + 1) % n_items}" for item in last])
    return float(np.mean(model.score_all(users).argmax(axis=1) == expected))


# ------------------------------------------------------------------------------ helpers


def _append_reference(sequences: np.ndarray, users: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-user lists: old row + new items, keep the last ``width``."""
    out = sequences.copy()
    width = sequences.shape[1]
    for user in dict.fromkeys(users.tolist()):
        new = [
            row for owner, row in zip(users.tolist(), rows.tolist(), strict=True) if owner == user
        ]
        out[user] = (out[user].tolist() + new)[-width:]
    return out


def _windows_reference(histories: list[list[int]], width: int) -> list[list[int]]:
    """Walk back from each user's last item in strides of ``width - 1``, left-padding with 0."""
    windows = []
    for items in histories:
        end = len(items)
        while True:
            window = items[max(0, end - width) : end]
            windows.append([0] * (width - len(window)) + window)
            if end - width <= 0:
                break
            end -= width - 1
    return windows


def test_append_in_place_hand_made_cases():
    sequences = np.array([[0, 0, 0, 5], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 7, 8]])
    users = np.array([0, 1, 1, 1, 1, 1, 1, 2, 2])
    rows = np.array([9, 10, 11, 12, 13, 14, 15, 20, 21])
    expected = np.array([[0, 0, 5, 9], [12, 13, 14, 15], [0, 0, 20, 21], [0, 0, 7, 8]])
    np.testing.assert_array_equal(_append_reference(sequences, users, rows), expected)
    _append_in_place(sequences, users, rows)
    np.testing.assert_array_equal(sequences, expected)


def test_windows_hand_made_cases():
    users = np.array([0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    rows = np.array([1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14])
    expected = [
        [3, 4, 5], [1, 2, 3],  # 5 items: two windows sharing item 3
        [0, 0, 6],  # one item: a window without a target
        [0, 7, 8],  # right-aligned, zero-padded
        [12, 13, 14], [0, 11, 12],
    ]  # fmt: skip
    np.testing.assert_array_equal(_windows(users, rows, 3), expected)
    histories = [[1, 2, 3, 4, 5], [6], [7, 8], [11, 12, 13, 14]]
    assert _windows_reference(histories, 3) == expected
    assert _windows(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4).shape == (0, 4)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 6),
    st.lists(st.lists(st.integers(1, 50), max_size=6), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 4), st.integers(1, 99)), max_size=40),
    st.integers(1, 15),
)
def test_append_in_place_matches_per_user_lists(width, initial, events, chunk):
    sequences = np.zeros((5, width), dtype=np.int64)
    for user, items in enumerate(initial):
        sequences[user] = ([0] * width + items)[-width:]
    expected = sequences.copy()
    for start in range(0, len(events), chunk):
        batch = sorted(events[start : start + chunk], key=lambda event: event[0])  # stable
        users = np.array([user for user, _ in batch], dtype=np.int64)
        rows = np.array([row for _, row in batch], dtype=np.int64)
        expected = _append_reference(expected, users, rows)
        if len(batch):
            _append_in_place(sequences, users, rows)
        np.testing.assert_array_equal(sequences, expected)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 6), st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=15),
                                   min_size=1, max_size=5))  # fmt: skip
def test_windows_match_the_reference_and_target_every_item_but_the_first(width, histories):
    users = np.repeat(np.arange(len(histories)), [len(items) for items in histories])
    rows = np.concatenate([np.array(items) for items in histories])
    windows = _windows(users, rows, width)
    np.testing.assert_array_equal(windows, np.array(_windows_reference(histories, width)))
    # each window is zero-padded on the left only
    assert all(np.all(np.diff((window > 0).astype(int)) >= 0) for window in windows)
    # every item but a user's first is a target exactly once (targets follow an item)
    targets = windows[:, 1:][(windows[:, :-1] > 0) & (windows[:, 1:] > 0)]
    assert sorted(targets.tolist()) == sorted(x for items in histories for x in items[1:])


# ------------------------------------------------------------------------------ the user state


def test_learning_without_update_steps_changes_the_sequence_not_the_network():
    stream = _cyclic_stream()
    model = _model(update_steps=0, epochs=5).fit(stream)
    before = {name: value.clone() for name, value in model.net_.state_dict().items()}
    steps = int(model.steps_[0])
    scores = model.score_all(["u0", "u1"])
    model.learn(EventBatch.from_columns(["u0"], ["i7"], [float(stream.timestamp.max()) + 60]))
    after = model.net_.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert int(model.steps_[0]) == steps
    new_scores = model.score_all(["u0", "u1"])
    assert np.abs(new_scores[0] - scores[0]).max() > 1e-3  # the user's state moved
    np.testing.assert_array_equal(new_scores[1], scores[1])  # nobody else's
    row = model.users_.lookup(["u0"])[0]
    assert model.sequences_[row, -1] == model.items_.lookup(["i7"])[0] + 1


def test_the_sequence_holds_the_latest_positive_items_in_time_order():
    model = _model(update_steps=0)
    positive = [f"p{k}" for k in range(12)]
    # Given newest first, then an impression and a skip (weight 0) as the latest events.
    users = ["u"] * 14
    items = [*positive[::-1], "shown", "skipped"]
    times = [*(T0 + 60 * k for k in reversed(range(12))), T0 + 10_000, T0 + 10_001]
    kinds = [*(["view"] * 12), "impression", "skip"]
    model.learn(EventBatch.from_columns(users, items, times, kinds))
    row = model.users_.lookup(["u"])[0]
    expected = model.items_.lookup(positive[-(MAX_LEN + 1) :]) + 1
    np.testing.assert_array_equal(model.sequences_[row], expected)
    model.learn(EventBatch.from_columns(["u", "u"], ["q1", "q0"], [T0 + 2e4 + 1, T0 + 2e4]))
    expected = model.items_.lookup([*positive[-(MAX_LEN - 1) :], "q0", "q1"]) + 1
    np.testing.assert_array_equal(model.sequences_[row], expected)


def test_only_the_last_max_len_items_are_read():
    stream = _cyclic_stream()
    model = _model(update_steps=0, epochs=5).fit(stream)
    read = [f"i{k}" for k in range(MAX_LEN)]
    histories = {
        "a": ["i19", *read],
        "b": ["i12", "i15", *read],  # differs from a only before the last max_len items
        "c": ["i19", "i12", *read[1:]],  # differs from a in the oldest item read
    }
    users = [user for user, items in histories.items() for _ in items]
    items = [item for items in histories.values() for item in items]
    times = [T0 + 1e6 + step for items in histories.values() for step in range(len(items))]
    model.learn(EventBatch.from_columns(users, items, times))
    scores = model.score_all(["a", "b", "c"])
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-6, atol=1e-6)
    assert np.abs(scores[2] - scores[0]).max() > 1e-3


# ------------------------------------------------------------------------------ text cold start

TOPICS = {
    "jazz": "jazz saxophone trumpet swing",
    "football": "football goal league striker",
    "cooking": "cooking recipe kitchen spice",
    "garden": "garden roses tulips compost",
}
PER_TOPIC = 6


def _topic_catalog(*extra: dict[str, str]) -> Catalog:
    records = [
        {"item": f"{topic}-{k}", "title": f"{words} part {k}"}
        for topic, words in TOPICS.items()
        for k in range(PER_TOPIC)
    ]
    return Catalog.from_records([*records, *extra])


def _topic_stream(n_users: int = 48, length: int = 10) -> EventBatch:
    """Each user consumes the items of one topic (user ``{topic}-fan-{k}``), in random order."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(n_users):
        topic = list(TOPICS)[user % len(TOPICS)]
        for step, k in enumerate(rng.choice(PER_TOPIC, size=length)):
            users.append(f"{topic}-fan-{user}")
            items.append(f"{topic}-{k}")
            times.append(T0 + 60 * step + user)
    return EventBatch.from_columns(users, items, times)


def test_a_new_item_is_ranked_by_its_text_before_anyone_touches_it():
    stream = _topic_stream()
    model = _model(text_encoder="hashing", id_dropout=0.5, learning_rate=1e-2)
    model.add_items(_topic_catalog()).fit(stream)
    model.add_items(Catalog.from_records([{"item": "jazz-new", "title": TOPICS["jazz"] + " new"}]))
    assert "jazz-new" in model.items_ and "jazz-new" not in stream.item
    users = np.unique(stream.user)
    scores = model.score_all(users)
    new = scores[:, model.items_.lookup(["jazz-new"])]
    assert np.isfinite(new).all()
    rank = (scores > new).sum(axis=1)  # 0 = first
    fan = np.char.startswith(users, "jazz-")
    # Seeds 0-9 (stream and model): jazz fans' mean rank 4.0-6.0 (behind the 6 known jazz
    # items at worst), the others' 10.7-17.0; jazz fans rank it above every other topic's item.
    assert rank[fan].mean() + 3 < rank[~fan].mean()
    other_topics = ~np.char.startswith(model.items_.to_array(), "jazz-")
    assert (scores[fan][:, other_topics] < new[fan]).mean() > 0.9

    # Until someone interacts with it the item is its text alone; then its id counts too.
    row = model.items_.lookup(["jazz-new"])[0] + 1
    with torch.no_grad():
        text_alone = model.net_.text_projection(model.net_.text[row])
        torch.testing.assert_close(model.net_.items()[row], text_alone)
    model.learn(EventBatch.from_columns([users[0]], ["jazz-new"], [T0 + 1e6]))
    with torch.no_grad():
        text_alone = model.net_.text_projection(model.net_.text[row])  # after the update step
        assert (model.net_.items()[row] - text_alone).abs().max() > 1e-3


def test_add_items_needs_a_text_model_and_its_own_encoder():
    catalog = _topic_catalog()
    with pytest.raises(ValueError, match="add_items needs a text encoder"):
        _model(text_encoder=None).add_items(catalog)
    foreign = ItemTexts.encode(catalog, "hashing(dim=32)")
    with pytest.raises(ValueError, match=r"encoded with 'hashing\(dim=32\)'"):
        _model(text_encoder="hashing").add_items(foreign)
    with pytest.raises(TypeError, match="items must be a Catalog or ItemTexts"):
        _model(text_encoder="hashing").add_items(["jazz-0"])


def _text_row(model: SequentialTransformer, item: str) -> torch.Tensor:
    return model.net_.text[model.items_.lookup([item])[0] + 1]


def test_the_catalogue_outlives_fit_save_and_load(tmp_path):
    stream = _topic_stream()
    unseen = {"item": "garden-unseen", "title": TOPICS["garden"] + " unseen"}
    texts = ItemTexts.encode(_topic_catalog(unseen), "hashing")
    expected = torch.tensor(texts.embeddings[-1])
    model = _model(text_encoder="hashing", epochs=2).add_items(texts)
    model.fit(stream)
    assert "garden-unseen" in model.items_ and "garden-unseen" not in stream.item
    assert torch.equal(_text_row(model, "garden-unseen"), expected)
    assert model.net_.has_text[model.items_.lookup(["garden-unseen"])[0] + 1]
    score = model.score(["garden-fan-3"], ["garden-unseen"])
    assert np.isfinite(score).all()

    model.save(tmp_path / "model")
    loaded = SequentialTransformer.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.score(["garden-fan-3"], ["garden-unseen"]), score)
    for refitted in (loaded.fit(stream), model.fit(stream)):
        assert "garden-unseen" in refitted.items_
        assert torch.equal(_text_row(refitted, "garden-unseen"), expected)

    # naming an item again replaces its text
    model.add_items(Catalog.from_records([{"item": "garden-unseen", "title": "football goal"}]))
    replaced = ItemTexts.encode(Catalog.from_records([{"item": "x", "title": "football goal"}]))
    assert torch.equal(_text_row(model, "garden-unseen"), torch.tensor(replaced.embeddings[0]))


# ------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("loss", ["softmax", "sampled"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_training_learns_the_next_item_of_a_cycle(loss, optimizer):
    stream = _cyclic_stream()
    params = {"loss": loss, "optimizer": optimizer, "negatives": 8, "weight_decay": 0.01}
    untrained = _model(**params, epochs=1, learning_rate=1e-6).fit(stream)
    trained = _model(**params, epochs=40, learning_rate=1e-2).fit(stream)
    assert _next_item_accuracy(untrained, stream, 20) < 0.25  # chance: 1 in 20
    assert _next_item_accuracy(trained, stream, 20) > 0.75  # seeds 0-9: 0.875 or more
    losses = [epoch["loss"] for epoch in trained.training_log_]
    assert len(losses) == 40 and losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------------------ distillation


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _kl(before: np.ndarray, after: np.ndarray) -> float:
    """Mean KL(before || after) of the next-item distributions, over users."""
    old, new = _log_softmax(before), _log_softmax(after)
    return float((np.exp(old) * (old - new)).sum(axis=1).mean())


def test_anchoring_keeps_the_predictions_of_untouched_users(tmp_path):
    stream = _cyclic_stream()
    _model(update_steps=5, learning_rate=1e-2).fit(stream).save(tmp_path / "fitted")
    held = [f"u{k}" for k in range(20, 40)]
    # The first 20 users now walk the cycle backwards, and meet a new item.
    users, items, times = [], [], []
    for user in range(20):
        last = int(stream.item[stream.user == f"u{user}"][-1][1:])
        for step in range(1, 9):
            users.append(f"u{user}")
            items.append(f"i{(last - step) % 20}" if step != 4 else "i-new")
            times.append(T0 + 1e6 + 60 * step)
    burst = EventBatch.from_columns(users, items, times)

    def fine_tuned(*strengths: float) -> tuple[SequentialTransformer, np.ndarray]:
        model = SequentialTransformer.load(tmp_path / "fitted")
        before = model.score_all(held)
        for strength in strengths:
            model.anchor(strength)
        for start in range(0, len(burst), 20):
            model.learn(burst.take(slice(start, start + 20)))
        return model, before

    free, before = fine_tuned(0.0)
    anchored, _ = fine_tuned(100.0)
    released, _ = fine_tuned(100.0, 0.0)
    n_old = before.shape[1]
    free_drift = _kl(before, free.score_all(held)[:, :n_old])
    anchored_drift = _kl(before, anchored.score_all(held)[:, :n_old])
    assert anchored_drift < 0.3 * free_drift
    assert released._teacher is None
    np.testing.assert_array_equal(released.score_all(held), free.score_all(held))


# ------------------------------------------------------------------------------ explanations


def _emptied_score(model: SequentialTransformer, user: str, item: str) -> float:
    """The score with every history input zeroed, positions kept (the integration baseline)."""
    sequence = torch.as_tensor(model.sequences_[model.users_.lookup([user])[0], 1:])
    model.net_.eval()
    with torch.no_grad():
        target = model.net_.items()[model.items_.lookup([item])[0] + 1]
        zeros = torch.zeros(1, len(sequence), model.dim)
        hidden = model.net_.encode_embedded(zeros, (sequence > 0)[None])[0, -1]
        return float(hidden @ target)


def _completeness_error(model: SequentialTransformer, user: str, item: str) -> tuple[float, float]:
    """(|sum of all attributions - (score - emptied score)|, |score - emptied score|)."""
    attribution = model._attribute(
        model.users_.lookup([user]), model.items_.lookup([item])[None, :]
    )
    emptied = _emptied_score(model, user, item)
    assert attribution.popularity[0, 0] == pytest.approx(emptied, abs=1e-5)
    difference = float(model.score([user], [item])[0, 0]) - emptied
    return abs(float(attribution.weights.sum()) - difference), abs(difference)


def test_integrated_gradients_attribute_the_score_to_the_items_read():
    stream = _cyclic_stream()  # 14 distinct items per user: the first 6 are not read
    model = _model(explain_steps=8).fit(stream)  # the default 3 nodes miss by up to 10 %
    users = ["u0", "u5", "u17", "u30"]
    for user in users:
        read = set(stream.item[stream.user == user][-MAX_LEN:])
        for item in model.recommend([user], k=5, exclude_seen=False).items[0]:
            explanation = model.explain(user, item, top=100)
            assert {r.item for r in explanation.reasons if r.kind == "history"} <= read
            assert all(r.weight > 0 for r in explanation.reasons)
            split = model._attribute(
                model.users_.lookup([user]), model.items_.lookup([item])[None, :]
            )
            assert set(model.items_.ids(split.history[split.history >= 0])) == read
            error, difference = _completeness_error(model, user, item)
            assert error <= 0.05 * difference + 1e-3, (user, item, error, difference)

    # the Gauss-Legendre rule converges fast: more nodes, far smaller completeness errors
    total = {}
    for steps in (1, 2, 4):
        model.explain_steps = steps
        total[steps] = sum(
            _completeness_error(model, user, f"i{k}")[0] for user in users for k in range(20)
        )
    assert total[4] < total[2] / 4 < total[1] / 4


# ------------------------------------------------------------------------------ growth


def test_growth_keeps_learned_rows_and_optimizer_moments_aligned():
    stream = _cyclic_stream(n_users=10, n_items=10, length=12)
    model = _model(update_steps=0, epochs=3).fit(stream)
    net, optimizer = model.net_, model.optimizer_
    old = net.item_embedding
    assert net.capacity < 40
    before = {name: value.clone() for name, value in net.state_dict().items()}
    moments_before = {name: value.clone() for name, value in optimizer.state[old].items()}

    t = float(stream.timestamp.max()) + 60
    new_items = [f"new-{k}" for k in range(30)]
    model.learn(EventBatch.from_columns(["u0"] * 30, new_items, t + np.arange(30)))
    grown = net.item_embedding
    assert len(model.items_) == 40 and net.capacity >= 40
    tables = (net.text, net.has_text, net.interacted)
    assert grown is not old and all(len(table) == len(grown) for table in tables)
    for name, value in before.items():  # growing alone changes no learned value
        if name == "interacted":  # the new items' ids start to count; the old flags stay
            assert net.interacted[model.items_.lookup(new_items) + 1].all()
            assert torch.equal(net.interacted[:11], value[:11])  # padding and the 10 old items
            continue
        assert torch.equal(net.state_dict()[name][: len(value)], value), name
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert any(p is grown for p in params) and not any(p is old for p in params)
    assert old not in optimizer.state
    moments = optimizer.state[grown]
    for name in ("exp_avg", "exp_avg_sq"):
        assert moments[name].shape == grown.shape
        assert torch.equal(moments[name][: len(old)], moments_before[name])
        assert not moments[name][len(old) :].any()

    # the optimiser steps on the grown table, new rows included
    model.update_steps = 2
    rows = model.items_.lookup(new_items[:3]) + 1
    new_rows = grown[rows].detach().clone()
    model.learn(EventBatch.from_columns(["u1"] * 3, new_items[:3], t + 100 + np.arange(3)))
    assert net.item_embedding is grown
    assert not torch.equal(grown[rows], new_rows)
    assert optimizer.state[grown]["exp_avg"].shape == grown.shape

    # growth is geometric: one more item makes room for many
    capacity = net.capacity
    model.learn(EventBatch.from_columns(["u2"], ["one-more"], [t + 200]))
    assert net.capacity >= 1.5 * capacity - 1


# ------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"dim": 10, "heads": 3}, "dim must be a multiple of heads"),
        ({"max_len": 0}, "max_len must be a positive integer"),
        ({"loss": "bpr"}, "loss must be one of"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"id_dropout": 1.5}, r"id_dropout must be in \[0, 1\)"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"update_steps": -1}, "update_steps must be an integer >= 0"),
        ({"update_steps": 1.5}, "update_steps must be an integer >= 0"),
        ({"update_steps": True}, "update_steps must be an integer >= 0"),
        ({"explain_steps": 0}, "explain_steps must be a positive integer"),
        ({"device": "abacus"}, "device must be 'auto', 'cpu' or 'cuda"),
        ({"text_encoder": "word2vec"}, "unknown text encoder 'word2vec'"),
        ({"text_encoder": "hashing(size=3)"}, "text encoder 'hashing\\(size=3\\)'"),
        ({"text_encoder": "hashing(dim=0)"}, "dim must be a positive integer"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(arguments, message):
    with pytest.raises(ValueError, match=message):
        SequentialTransformer(**arguments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_is_refused():
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
        SequentialTransformer(device="cuda")
