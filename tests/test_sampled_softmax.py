"""The transformer's sampled softmax: in-batch and uniform negatives with the log-Q correction.

It must be the full softmax when every item is a candidate (value and gradients, distillation
included), its corrected partition sum must be unbiased over the draws where the uncorrected
one is not, and a step's candidates must not grow with the catalogue.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lifelong_rec.events import EventBatch  # noqa: E402
from lifelong_rec.models.sequential import SequentialTransformer  # noqa: E402
from lifelong_rec.models.sequential_net import (  # noqa: E402
    inclusion_probability,
    sampled_softmax_loss,
)

T0 = 1.7e9


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _stream(n_users: int = 30, n_items: int = 25, length: int = 12, seed: int = 0) -> EventBatch:
    """Users walking a cycle of items, with a popular head: a third of the steps go to i0."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(n_users):
        position = int(rng.integers(n_items))
        for step in range(length):
            position = (position + 1) % n_items
            item = 0 if rng.random() < 1 / 3 else position
            users.append(f"u{user}")
            items.append(f"i{item}")
            times.append(T0 + 60 * step + user)
    return EventBatch.from_columns(users, items, times)


def _model(**overrides: object) -> SequentialTransformer:
    params = {"max_len": 8, "dim": 16, "layers": 1, "heads": 2, "dropout": 0.0,
              "id_dropout": 0.0, "epochs": 2, "batch_size": 16, "text_encoder": None,
              "device": "cpu"}  # fmt: skip
    return SequentialTransformer(**(params | overrides))


def _loss_and_gradients(
    model: SequentialTransformer, windows: np.ndarray
) -> tuple[float, dict[str, torch.Tensor]]:
    rows = torch.as_tensor(windows)
    valid = (rows[:, :-1] > 0) & (rows[:, 1:] > 0)
    model.net_.train()
    model.net_.zero_grad(set_to_none=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        loss = model._loss(rows[:, :-1], rows[:, 1:], valid)
    loss.backward()
    gradients = {
        name: parameter.grad.clone()
        for name, parameter in model.net_.named_parameters()
        if parameter.grad is not None
    }
    if model.item_optimizer_ is not None:  # the id table's gradient: the rows read (LazyAdam's)
        assert "item_embedding" not in gradients
        rows, ids = model._touched
        table = torch.zeros_like(model.net_.item_embedding)
        table[rows] = ids.grad
        gradients["item_embedding"] = table
    return float(loss.detach()), gradients


@pytest.mark.parametrize("item_optimizer", ["lazy", "dense"])
@pytest.mark.parametrize("distill", [0.0, 0.7])
@pytest.mark.parametrize("text_encoder", [None, "hashing(dim=32)"])
def test_sampling_every_item_is_the_full_softmax(distill, text_encoder, item_optimizer):
    stream = _stream()
    model = _model(text_encoder=text_encoder).fit(stream)
    n_items = len(model.items_)
    if distill:
        model.anchor(distill)
        model.learn(_stream(n_users=5, seed=1))  # the network moves away from its snapshot
    windows = model.sequences_[np.arange(len(model.users_))]
    full_loss, full_gradients = _loss_and_gradients(model, windows)
    model.loss, model.negatives = "sampled", n_items  # every item is a candidate
    model.item_optimizer = item_optimizer
    model._new_optimizers()  # lazy: the table's gradient comes from the rows read
    for in_batch, log_q in [(True, True), (False, True), (True, False)]:
        model.in_batch_negatives, model.log_q_correction = in_batch, log_q
        loss, gradients = _loss_and_gradients(model, windows)
        assert loss == pytest.approx(full_loss, rel=1e-5)
        assert set(gradients) == set(full_gradients)
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, full_gradients[name], rtol=1e-4, atol=1e-6)
    # a few uniform draws: a sampled estimate, no longer the full loss
    model.negatives, model.in_batch_negatives, model.log_q_correction = 4, False, True
    assert _loss_and_gradients(model, windows)[0] != pytest.approx(full_loss, rel=0.01)


def test_the_corrected_partition_sum_is_unbiased_and_the_uncorrected_is_not():
    """Targets drawn from a Zipf popularity, uniform draws besides: over many batches, the
    mean of each position's corrected sum of exponentials matches the full partition sum
    within 5 %, while the uncorrected one misses most of it."""
    generator = torch.Generator().manual_seed(0)
    n_items, dim, positions, negatives = 300, 8, 40, 30
    vectors = torch.randn(n_items + 1, dim, generator=generator, dtype=torch.float64)
    hidden = torch.randn(1, dim, generator=generator, dtype=torch.float64).expand(positions, dim)
    share = 1.0 / np.arange(1, n_items + 1)
    share = torch.as_tensor(share / share.sum())
    scores = (hidden[0] @ vectors[1:].T).exp()  # the full softmax's exponentials
    sums = {True: [], False: []}
    for _ in range(3000):
        wanted = torch.multinomial(share, positions, replacement=True, generator=generator) + 1
        drawn = torch.randint(1, n_items + 1, (negatives,), generator=generator)
        candidates = torch.unique(torch.cat([wanted, drawn]))
        q = inclusion_probability(share[candidates - 1], positions, negatives, n_items)
        positive = (hidden * vectors[wanted]).sum(-1)
        usable = torch.ones(len(candidates), dtype=torch.bool)
        for correct in (True, False):
            losses = sampled_softmax_loss(hidden, wanted, positive, candidates,
                                          vectors[candidates], usable,
                                          q.log() if correct else None, "none")  # fmt: skip
            # the loss is log(sum) - positive score, per position: its target's exponential
            # taken out, the rest estimates the partition sum over every other item
            rest = (losses.double() + positive).exp() - positive.exp()
            truth = scores.sum() - scores[wanted - 1]
            sums[correct].append((rest / truth).numpy())
    corrected, plain = np.mean(sums[True]), np.mean(sums[False])
    assert corrected == pytest.approx(1.0, abs=0.05)
    assert plain < 0.7


def test_the_candidates_do_not_grow_with_the_catalogue():
    """A catalogue 200 times larger (5,000 more items, each touched once): a step's
    candidates are still the batch's targets and the uniform draws, no more."""
    small = _stream(n_items=25)
    extra = 5000
    large = EventBatch.from_columns(
        np.concatenate([small.user, [f"v{k}" for k in range(extra)]]),
        np.concatenate([small.item, [f"x{k}" for k in range(extra)]]),
        np.concatenate([small.timestamp, T0 - 1 - np.arange(extra)]),
    )
    counts = []
    for stream in (small, large):
        model = _model(loss="sampled", negatives=16, epochs=1).fit(stream)
        users = model.users_.lookup([f"u{k}" for k in range(8)])
        wanted = torch.as_tensor(model.sequences_[users, 1:].ravel())
        wanted = wanted[wanted > 0]
        with torch.random.fork_rng():
            torch.manual_seed(0)
            candidates, log_q = model._candidates(wanted)
        assert log_q is not None and len(log_q) == len(candidates)
        assert len(candidates) <= len(torch.unique(wanted)) + 16
        counts.append(len(candidates))
    assert len(model.items_) > extra
    assert counts[1] <= counts[0] + 16


def test_item_counts_follow_learning_and_survive_save_and_load(tmp_path):
    stream = _stream()
    model = _model(loss="sampled", negatives=8).fit(stream)
    expected = np.bincount(model.items_.lookup(stream.item) + 1, minlength=len(model.items_) + 1)
    assert np.array_equal(model.item_counts_[: len(expected)].numpy(), expected)
    more = _stream(n_users=3, seed=2)
    model.learn(more)
    expected += np.bincount(model.items_.lookup(more.item) + 1, minlength=len(expected))
    assert np.array_equal(model.item_counts_[: len(expected)].numpy(), expected)
    model.save(tmp_path / "model")
    loaded = SequentialTransformer.load(tmp_path / "model")
    assert torch.equal(loaded.item_counts_, model.item_counts_)
    assert loaded._counted == model._counted == expected.sum()

    # a model saved before the counts were kept: each item's users stand for its events
    arrays = dict(np.load(tmp_path / "model" / "arrays.npz"))
    del arrays["model.item_counts"]
    np.savez(tmp_path / "model" / "arrays.npz", **arrays)
    old = SequentialTransformer.load(tmp_path / "model")
    users_per_item = np.diff(model.history_.tocsr().tocsc().indptr)
    assert np.array_equal(old.item_counts_[1 : len(users_per_item) + 1].numpy(), users_per_item)


@pytest.mark.parametrize("name", ["in_batch_negatives", "log_q_correction"])
def test_the_switches_must_be_booleans(name):
    with pytest.raises(ValueError, match=f"{name} must be True or False"):
        SequentialTransformer(**{name: "yes"})
