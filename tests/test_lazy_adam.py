"""The sampled softmax's lazy Adam for the id table (LazyAdam): it updates the rows a step
touches and nothing else, is dense Adam on them where dense Adam's moments are what it keeps,
and its state survives saving, loading and resuming.

Before it, every sampled step ran dense Adam over the whole table (and its dense gradient),
so the step's cost still grew with the catalogue (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lifelong_rec.events import EventBatch  # noqa: E402
from lifelong_rec.models.sequential import SequentialTransformer  # noqa: E402
from lifelong_rec.models.sequential_net import LazyAdam  # noqa: E402

T0 = 1.7e9

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _dense_and_lazy(
    steps: list[torch.Tensor], **adam: float
) -> tuple[torch.Tensor, torch.optim.Adam, torch.Tensor, LazyAdam, list[torch.Tensor]]:
    """A 50 x 8 table stepped by torch's Adam on dense gradients (zero outside each step's
    rows) and a copy stepped by LazyAdam on the rows alone; the same random gradients."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=generator)
    dense = torch.nn.Parameter(table.clone())
    decoupled = bool(adam.pop("decoupled", False))
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    optimizer = kind([dense], lr=0.01, **adam)
    lazy = LazyAdam(0.01, decoupled=decoupled, **adam)
    history = [table.clone()]
    for rows in steps:
        gradient = torch.randn(len(rows), 8, generator=generator)
        dense.grad = torch.zeros_like(dense)
        dense.grad[rows] = gradient
        optimizer.step()
        lazy.step(table, rows, gradient)
        history.append(table.clone())
    return dense.detach(), optimizer, table, lazy, history


def test_the_first_step_is_dense_adam_and_leaves_the_other_rows_bit_identical():
    rows = torch.tensor([1, 4, 7, 30])
    dense, optimizer, table, lazy, history = _dense_and_lazy([rows])
    assert torch.equal(table, dense)  # every row: dense Adam's zero moments do not move
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(table[untouched], history[0][untouched])
    assert not torch.equal(table[rows], history[0][rows])
    # by hand: the first Adam step moves each element by lr * g / (|g| + eps) = lr * sign(g)
    moved = table[rows] - history[0][rows]
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, 0.01), rtol=1e-5, atol=0)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert torch.equal(lazy.exp_avg, state["exp_avg"])
    assert torch.equal(lazy.exp_avg_sq, state["exp_avg_sq"])
    assert lazy.step_count == 1 and lazy.last_step[rows].tolist() == [1] * 4


def test_missed_steps_decay_the_moments_as_dense_adam_and_do_not_move_the_row():
    """Row 1 is touched at steps 1 and 3, not at step 2: at step 2 it is bit-identical (dense
    Adam moves it by its momentum); at step 3 its moments are dense Adam's (decayed by the
    betas for the step it missed). Row 4, touched at every step, is dense Adam's exactly."""
    steps = [torch.tensor([1, 4, 7]), torch.tensor([4, 9]), torch.tensor([1, 4, 9, 20])]
    dense, optimizer, table, lazy, history = _dense_and_lazy(steps)
    assert torch.equal(history[2][1], history[1][1])  # not touched at step 2
    assert torch.equal(history[2][7], history[1][7])
    assert torch.equal(table[4], dense[4])  # touched at every step
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    touched = steps[2]
    torch.testing.assert_close(lazy.exp_avg[touched], state["exp_avg"][touched], rtol=1e-6, atol=0)
    torch.testing.assert_close(
        lazy.exp_avg_sq[touched], state["exp_avg_sq"][touched], rtol=1e-6, atol=0
    )
    assert not torch.equal(table[1], dense[1])  # dense Adam moved it at step 2
    assert lazy.last_step[[1, 7, 9, 20]].tolist() == [3, 1, 3, 3]


def test_adamw_catches_up_the_decay_of_the_steps_a_row_missed():
    """AdamW's decoupled decay of a row first touched at step 3, with a zero gradient (its
    moments stay zero, Adam's step is zero): the value shrinks by (1 - lr * decay)^3, as
    dense AdamW shrinks it over the three steps."""
    table = torch.ones(6, 2)
    lazy = LazyAdam(0.1, weight_decay=0.5, decoupled=True)
    for rows in ([0], [1], [0, 2]):
        rows_ = torch.tensor(rows)
        lazy.step(table, rows_, torch.zeros(len(rows_), 2))
    torch.testing.assert_close(table[2], torch.full((2,), 0.95**3))
    torch.testing.assert_close(table[0], torch.full((2,), 0.95**3))  # 1, then 2 steps
    torch.testing.assert_close(table[1], torch.full((2,), 0.95**2))  # not touched since step 2
    assert torch.equal(table[3:], torch.ones(3, 2))


# ------------------------------------------------------------------------------ in the model


def _stream(n_users: int = 30, n_items: int = 300, length: int = 12, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{k}" for k in range(n_users)], length)
    items = np.array([f"i{k}" for k in rng.integers(0, n_items, n_users * length)])
    times = T0 + np.tile(60.0 * np.arange(length), n_users) + np.repeat(np.arange(n_users), length)
    return EventBatch.from_columns(users, items, times)


def _model(**overrides: object) -> SequentialTransformer:
    params = {"max_len": 8, "dim": 16, "layers": 1, "heads": 2, "dropout": 0.0,
              "id_dropout": 0.0, "epochs": 2, "batch_size": 16, "text_encoder": None,
              "device": "cpu", "loss": "sampled", "negatives": 8}  # fmt: skip
    return SequentialTransformer(**(params | overrides))


def test_a_sampled_step_updates_the_rows_it_read_and_no_other():
    model = _model().fit(_stream())
    table = model.net_.item_embedding
    assert model.item_optimizer_ is not None and not table.requires_grad
    assert all(p is not table for g in model.optimizer_.param_groups for p in g["params"])
    before = table.detach().clone()
    others = {n: p.detach().clone() for n, p in model.net_.named_parameters() if p is not table}
    windows = model.sequences_[:4]
    model.train_step(windows)
    assert table.grad is None  # no dense gradient of the table
    read = torch.unique(torch.cat([torch.as_tensor(windows).flatten(), torch.zeros(1).long()]))
    changed = torch.nonzero((table.detach() != before).any(dim=1)).flatten()
    untouched = torch.ones(len(table), dtype=torch.bool)
    untouched[model.item_optimizer_.last_step == int(model.steps_[0])] = False
    assert torch.equal(table.detach()[untouched], before[untouched])
    assert untouched.sum() > len(table) / 2  # 8 negatives and 4 windows: most rows untouched
    assert set(read[read > 0].tolist()) <= set(changed.tolist())  # the windows' items moved
    assert all(not torch.equal(p.detach(), others[n]) for n, p in model.net_.named_parameters()
               if p is not table and n in others)  # fmt: skip


def test_the_full_softmax_keeps_dense_adam_over_the_table():
    model = _model(loss="softmax").fit(_stream())
    table = model.net_.item_embedding
    assert model.item_optimizer_ is None and table.requires_grad
    assert table in model.optimizer_.state


def test_save_load_and_resume_keep_the_lazy_state(tmp_path):
    stream = _stream()
    model = _model().fit(stream)
    model.save(tmp_path / "model")
    loaded = SequentialTransformer.load(tmp_path / "model")
    mine, theirs = model.item_optimizer_, loaded.item_optimizer_
    assert mine is not None and theirs is not None
    assert theirs.step_count == mine.step_count == int(model.steps_[0]) > 0
    for name, value in mine.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], value), name
    assert not loaded.net_.item_embedding.requires_grad
    # resumed: the same next steps, bit for bit (new items grow the table and the state)
    capacity = model.net_.capacity
    more = _stream(n_users=4, seed=3)
    more = EventBatch.from_columns(
        more.user, [f"new-{k}" for k in range(len(more))], more.timestamp
    )
    for each in (model, loaded):
        each.learn(more)
    assert model.net_.capacity > capacity
    assert torch.equal(loaded.net_.item_embedding, model.net_.item_embedding)
    for name, value in mine.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], value), name
    assert len(mine.last_step) == len(model.net_.item_embedding)
    assert not model.net_.item_embedding.requires_grad  # grown, still LazyAdam's


def test_a_sampled_model_saved_with_dense_adam_loads_its_moments_as_up_to_date(tmp_path):
    """Saved before LazyAdam: the table's moments were dense Adam's, current at its step."""
    model = _model().fit(_stream())
    model.save(tmp_path / "model")
    arrays = dict(np.load(tmp_path / "model" / "arrays.npz"))
    last = [name for name in arrays if name.endswith(".last_step")]
    assert len(last) == 1
    del arrays[last[0]]
    arrays[last[0].replace("last_step", "step")] = np.float32(model.steps_[0])  # as Adam's
    np.savez(tmp_path / "model" / "arrays.npz", **arrays)
    loaded = SequentialTransformer.load(tmp_path / "model")
    lazy = loaded.item_optimizer_
    assert lazy is not None and lazy.step_count == int(model.steps_[0])
    assert torch.equal(lazy.last_step, torch.full_like(lazy.last_step, lazy.step_count))
    assert torch.equal(lazy.exp_avg, model.item_optimizer_.exp_avg)


def test_item_optimizer_dense_keeps_adam_over_the_whole_table_for_the_sampled_softmax(tmp_path):
    """``item_optimizer="dense"``: the sampled softmax's table is stepped by Adam with the
    rest (a dense gradient, rows outside the step moved by their momentum), and it saves and
    loads so; a bad name is refused, naming the parameter."""
    model = _model(item_optimizer="dense").fit(_stream())
    table = model.net_.item_embedding
    assert model.item_optimizer_ is None and table.requires_grad
    assert table in model.optimizer_.state
    before = table.detach().clone()
    model.train_step(model.sequences_[:1])  # one window: most rows are not read
    moved = (table.detach() != before).any(dim=1)
    assert moved.sum() > len(table) / 2  # momentum moves rows the step did not read
    model.save(tmp_path / "dense")
    loaded = SequentialTransformer.load(tmp_path / "dense")
    assert loaded.item_optimizer_ is None
    assert torch.equal(loaded.optimizer_.state[loaded.net_.item_embedding]["exp_avg"],
                       model.optimizer_.state[table]["exp_avg"])  # fmt: skip
    with pytest.raises(ValueError, match="item_optimizer must be one of"):
        _model(item_optimizer="sparse")
