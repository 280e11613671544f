"""The deep model: a SASRec-style sequential transformer whose items can start from their text.

A user is their recent items: the model reads the sequence with causal self-attention and scores
every item by the dot product of the last hidden state with the item's representation. An item's
representation is a learned id embedding plus a learned projection of its text embedding (from a
:class:`~lifelong_rec.models.text.TextEncoder`), so an item that nobody has touched yet is
represented by its text alone and is recommendable the moment the catalogue names it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import Catalog, EventBatch, IdIndex
from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.explanation import Attribution
from lifelong_rec.models.retrieval import IndexedItems, make_retrieval
from lifelong_rec.models.sequential_net import (
    LazyAdam,
    SequenceNet,
    inclusion_probability,
    init_weights,
    resolve_device,
    sampled_softmax_loss,
    seeded,
)
from lifelong_rec.models.text import ItemTexts, TextEncoder
from lifelong_rec.models.text import text_encoder as make_text_encoder

LOSSES = ("softmax", "sampled")
OPTIMIZERS = ("adam", "adamw")
ITEM_OPTIMIZERS = ("lazy", "dense")
_SCORE_USERS = 512  # users encoded per forward pass when scoring
_EXPLAIN_USERS = 4  # users per integrated-gradients pass (4-16 measured: 4 is fastest on a CPU)
_GROWTH = 1.5  # item capacity grows by this factor, so growing is rare and amortised
# (id rows, their gradient) -> (every process's rows, the gradient averaged over processes)
RowReduction = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SequentialTransformer(IndexedItems, Recommender):
    """Causal self-attention over each user's recent items (Kang & McAuley, ICDM 2018), with
    item representations that can start from a pretrained language model's text embeddings.

    Training. Each user's positive events, in time order, are cut into windows of
    ``max_len + 1`` items; every position predicts the next item. The loss is the softmax
    cross-entropy over the whole catalogue (``loss="softmax"``) or a sampled softmax
    (``loss="sampled"``, for large catalogues: a step's cost does not grow with the number of
    items). The sampled softmax scores each target against candidates shared by the batch:
    the batch's other targets (in-batch negatives, drawn in proportion to the items'
    popularity) and ``negatives`` items drawn uniformly. With the log-Q correction each
    candidate's logit is lowered by the log of the probability that it was drawn, so that the
    sum over the candidates is an unbiased (Horvitz-Thompson) estimate of the full softmax's
    partition sum; without it, popular items (drawn often as in-batch negatives) are pushed
    down too hard. When ``negatives`` is at least the number of items, every item is a
    candidate and the sampled softmax is the full one. Adam or AdamW, dropout, layer norm,
    learned positions; with the sampled softmax the id table's Adam is lazy by default (it
    updates the rows a step touches; see ``item_optimizer``). With a text encoder,
    ``id_dropout`` of the items lose their id embedding at each step, so the text projection
    learns to stand for an item alone, as it must for a new one.

    Learning as it goes. ``learn`` appends the batch's positive events to the users'
    sequences: that alone changes the next recommendation (the user state *is* the
    sequence). Then it takes ``update_steps`` optimiser steps on the touched users' latest
    windows (0: sequence updates only). ``replay`` takes steps on the windows of the replayed
    users. ``anchor(strength)`` snapshots the network; later steps add ``strength`` times the
    KL divergence from the snapshot's next-item distribution to the model's (knowledge
    distillation from the previous snapshot) to their loss: the pull is on outputs, not on
    parameters.

    New items get an id row on first sight (and their text row when the catalogue has
    them); ``add_items`` makes catalogue items known before any interaction. New users need
    only their sequence.

    Explanations are integrated gradients (Sundararajan et al., ICML 2017) of the score with
    respect to the history items' input vectors, from a zero baseline (positions kept),
    integrated by the ``explain_steps``-node Gauss-Legendre rule: the weights add up to the
    score minus the score of the emptied sequence, up to the integration error. That
    baseline score (what the model gives the item for anyone) is the explanation's
    popularity reason.

    Parameters
    ----------
    max_len : int
        Items of a user's history the model reads.
    dim, layers, heads : int
        Width (a multiple of ``heads``), depth and attention heads.
    dropout : float
    loss : {"softmax", "sampled"}
    negatives : int
        Uniformly drawn negatives per batch when ``loss="sampled"`` (with replacement;
        duplicates count once).
    in_batch_negatives : bool
        ``loss="sampled"``: the batch's targets are candidates for every position too (in
        distributed training, the targets of every process's batch).
    log_q_correction : bool
        ``loss="sampled"``: subtract the log of each candidate's probability of being drawn
        from its logit (Yi et al., RecSys 2019; Bengio & Senecal, 2008).
    optimizer : {"adam", "adamw"}
    item_optimizer : {"lazy", "dense"}
        With the sampled softmax: how the id table is stepped. ``"lazy"``
        (:class:`~lifelong_rec.models.sequential_net.LazyAdam`) updates the rows a step
        touches alone, so a step's cost does not grow with the catalogue (193 against 1,553
        ms at a million items, docs/training.md); ``"dense"`` runs ``optimizer`` over the
        whole table, as the full softmax always does. On ML latest-small (P2, 8 epochs,
        seeds 0-2) lazy reached NDCG@10 0.0210 / 0.0324 / 0.0240 against dense's 0.0241 /
        0.0361 / 0.0236: within the seeds' spread, perhaps a little lower.
    learning_rate, weight_decay : float
    epochs : int
        Passes over the windows in ``fit``.
    batch_size : int
    update_steps : int
        Optimiser steps per ``learn`` call (per chunk of ``batch_size`` users); 0 keeps the
        network as it is and only extends the sequences.
    text_encoder : str or None
        A :func:`~lifelong_rec.models.text.text_encoder` spec ("hashing", "minilm", ...);
        None for an id-only model.
    id_dropout : float
        Share of items with text whose id embedding is dropped at each training step.
    init_std : float
    explain_steps : int
        Gauss-Legendre nodes of the integrated gradients: each costs one backward pass for
        all the explained items. On ML-100K (20 epochs) the parts miss the score by 9.6 % of
        its distance from the baseline with 3 nodes (a request costs about 11 times the
        recommendation), 0.7 % with 8 (19 times), 0.03 % with 16 (32 times); the error stays
        in ``Explanation.rest``.
    device : str
        "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ...; on CUDA the
        forward passes run in bfloat16 mixed precision (the logits and losses in float32)
        and the optimiser is fused (one kernel for every parameter's update).
    seed : int
        Runs on the CPU are deterministic for a seed.
    fallback_half_life_days : float or None
    retrieval : str, optional
        How the top-k items are found: None or ``"exact"`` scores every item; ``"ivf"``
        (``"ivf(nprobe=32)"``, see :class:`~lifelong_rec.models.retrieval.IVFIndex`) keeps an
        approximate index of the item representations, searched with the user's last hidden
        state (needs ``lifelong-rec[ann]``). Its clusters are trained after ``fit`` and when a
        trained network is adopted; new items and items at their first event move into it
        as they arrive; a ``learn`` or ``replay`` that takes optimiser steps moves every
        item's representation, so it puts every item back in the trained clusters (no
        k-means: O(items x clusters x dim) per learned batch). With sequence updates only
        (``update_steps=0``, as when a trainer is delegated to) the items stay where they
        are. Scoring, explaining and a request with a candidate list stay exact.

    Attributes
    ----------
    net_ : SequenceNet
        The network (on ``device``).
    sequences_ : array of int64, shape (n_users, max_len + 1)
        Each user's latest item rows (item index + 1), right-aligned, 0 = padding.
    optimizer_ : torch.optim.Adam or torch.optim.AdamW
        The network's optimiser; with ``loss="sampled"``, of every parameter but the id table.
    item_optimizer_ : LazyAdam or None
        With ``loss="sampled"``: the id table's, which updates the rows a step touches alone
        (their moments, decayed for the steps they missed, and their values), so a step's
        cost does not grow with the catalogue.
    training_log_ : list of dict
        Per epoch of the last ``fit``: mean loss, seconds, training targets per second.
    item_counts_ : tensor of float64, shape (capacity + 1,)
        Positive events learned per item row (row 0: padding): the popularity from which
        in-batch negatives are drawn, for the log-Q correction.
    """

    name = "transformer"

    def __init__(
        self,
        max_len: int = 50,
        dim: int = 64,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        loss: str = "softmax",
        negatives: int = 256,
        in_batch_negatives: bool = True,
        log_q_correction: bool = True,
        optimizer: str = "adam",
        item_optimizer: str = "lazy",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        epochs: int = 30,
        batch_size: int = 128,
        update_steps: int = 1,
        text_encoder: str | TextEncoder | None = "hashing",
        id_dropout: float = 0.1,
        init_std: float = 0.1,
        explain_steps: int = 3,
        device: str = "auto",
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
        retrieval: str | None = None,
    ) -> None:
        check_positive_ints(
            max_len=max_len, dim=dim, layers=layers, heads=heads, negatives=negatives,
            epochs=epochs, batch_size=batch_size, explain_steps=explain_steps,
        )  # fmt: skip
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if item_optimizer not in ITEM_OPTIMIZERS:
            raise ValueError(
                f"item_optimizer must be one of {ITEM_OPTIMIZERS}, got {item_optimizer!r}"
            )
        for name, value in (("dropout", dropout), ("id_dropout", id_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        for name, flag in (("in_batch_negatives", in_batch_negatives),
                           ("log_q_correction", log_q_correction)):  # fmt: skip
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if not isinstance(update_steps, int) or isinstance(update_steps, bool) or update_steps < 0:
            raise ValueError(f"update_steps must be an integer >= 0, got {update_steps!r}")
        self._encoder = None if text_encoder is None else make_text_encoder(text_encoder)
        self._device = resolve_device(device)
        self.max_len = max_len
        self.dim = dim
        self.layers = layers
        self.heads = heads
        self.dropout = dropout
        self.loss = loss
        self.negatives = negatives
        self.in_batch_negatives = in_batch_negatives
        self.log_q_correction = log_q_correction
        self.optimizer = optimizer
        self.item_optimizer = item_optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.update_steps = update_steps
        self.text_encoder = None if self._encoder is None else self._encoder.spec()
        self.id_dropout = id_dropout
        self.init_std = init_std
        self.explain_steps = explain_steps
        self.device = device
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days
        make_retrieval(retrieval)  # checks the spec (and that faiss is there) now
        self.retrieval = retrieval
        self._catalog: ItemTexts | None = None  # survives fit: it is metadata, not learning
        self._catalog_index = IdIndex()  # the catalogue's ids, for looking up text rows

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"max_len": 8, "dim": 16, "layers": 1, "epochs": 2, "device": "cpu"}

    # -------------------------------------------------------------- the catalogue

    def add_items(self, items: Catalog | ItemTexts) -> SequentialTransformer:
        """Make catalogue items known, and rankable through their text, before anyone has
        interacted with them (the cold start of a news article or a new product).

        ``items`` is a :class:`Catalog` (encoded here, once) or :class:`ItemTexts` already
        encoded with this model's encoder. The catalogue is kept across ``fit`` and saved
        with the model; a later call adds to it (and replaces the text of items it names
        again). Returns the model, so a factory can read ``Model(...).add_items(texts)``.
        """
        if self._encoder is None:
            raise ValueError(
                "add_items needs a text encoder; this model has text_encoder=None (id only)"
            )
        if isinstance(items, Catalog):
            items = ItemTexts.encode(items, self._encoder)
        if not isinstance(items, ItemTexts):
            raise TypeError(f"items must be a Catalog or ItemTexts, not {type(items).__name__}")
        if items.encoder != self.text_encoder:
            raise ValueError(
                f"items were encoded with {items.encoder!r}, this model uses {self.text_encoder!r}"
            )
        self._set_catalog(_merge(self._catalog, items))
        if self.is_fitted:
            self._admit(items.items)
            self._fill_text(np.arange(len(self.items_)))
        return self

    def _set_catalog(self, texts: ItemTexts) -> None:
        """Keep the catalogue and index its ids once (new items look their text up there)."""
        self._catalog = texts
        self._catalog_index = IdIndex(texts.items)

    def _admit(self, ids: np.ndarray) -> None:
        """Add item ids to the model (growing every table) without any event."""
        n_items = len(self.items_)
        self.items_.add(ids)
        if len(self.items_) > n_items:
            self._grow_all(len(self.users_), len(self.items_))
            self._sync_moved()

    def _fill_text(self, items: np.ndarray) -> None:
        """Copy the catalogue's text embeddings into the network's rows of ``items``."""
        if self._catalog is None or not len(items):
            return
        found = self._catalog_index.lookup(self.items_.ids(items))
        hit = found >= 0
        if not hit.any():
            return
        rows = torch.as_tensor(items[hit] + 1, device=self._device)
        vectors = torch.tensor(self._catalog.embeddings[found[hit]], device=self._device)
        with torch.no_grad():
            self.net_.text[rows] = vectors
            self.net_.has_text[rows] = vectors.abs().sum(dim=1) > 0
        self._changed()

    # -------------------------------------------------------------- state

    def _reset(self) -> None:
        super()._reset()
        if self._catalog is not None:
            self._admit(self._catalog.items)

    def _reset_model(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        text_dim = 0 if self._encoder is None else self._encoder.dim
        self.net_ = SequenceNet(0, self.dim, self.layers, self.heads, self.max_len,
                                self.dropout, text_dim, self.init_std)  # fmt: skip
        init_weights(self.net_, generator)
        self.net_.to(self._device)
        self._new_optimizers()
        self.sequences_ = np.zeros((0, self.max_len + 1), dtype=np.int64)  # item row, 0 = pad
        self.steps_ = np.zeros(1, dtype=np.int64)  # optimiser steps taken (also seeds them)
        self.item_counts_ = torch.zeros(1, dtype=torch.float64, device=self._device)
        self._counted = 0.0  # item_counts_.sum(), kept as events are counted
        self._teacher: tuple[SequenceNet, int] | None = None  # (snapshot, its item count)
        self._distill = 0.0
        # Set by the distributed trainer: the targets of every process's batch, so that
        # each takes the others' as in-batch negatives too (one process: None).
        self._gather_targets: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Set by the distributed trainer too: a sampled step's id rows and their gradient
        # -> the rows of every process and their gradient averaged over the processes.
        self._reduce_rows: RowReduction | None = None
        self._touched: tuple[torch.Tensor, torch.Tensor] | None = None  # a sampled step's
        self._items_in_net = 0  # items whose rows the network has (text filled in)
        # the approximate top-k index of the item representations (None: every item scored)
        self.index_ = make_retrieval(self.retrieval)
        self._moved: list[np.ndarray] = []  # items whose representation changed alone since
        self._changed()

    def _new_optimizers(self) -> None:
        """Fresh optimisers: Adam or AdamW (``optimizer_``) for the network; with the
        sampled softmax, for every parameter but the id table, which :class:`LazyAdam`
        (``item_optimizer_``) updates at the rows a step touches, so that a step's cost does
        not grow with the catalogue. (The full softmax's gradient reaches every row anyway:
        its table stays with ``optimizer_``.)"""
        kind = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        table = self.net_.item_embedding
        lazy = self.loss == "sampled" and self.item_optimizer == "lazy"
        # autograd (and DistributedDataParallel) leave a lazily updated table alone: a
        # sampled step reads the rows it needs from it and differentiates those
        table.requires_grad_(not lazy)
        self.item_optimizer_ = (
            LazyAdam(self.learning_rate, weight_decay=self.weight_decay,
                     decoupled=self.optimizer == "adamw")
            if lazy else None
        )  # fmt: skip
        self.optimizer_ = kind(
            [
                parameter
                for parameter in self.net_.parameters()
                if not (lazy and parameter is table)
            ],
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            fused=self._fused,  # one kernel updates every parameter
        )

    @property
    def _fused(self) -> bool:
        """Whether the optimiser runs fused (CUDA: its step count then lives on the GPU)."""
        return self._device.type == "cuda"

    def _grow(self, n_users: int, n_items: int) -> None:
        extra = n_users - len(self.sequences_)
        if extra > 0:
            padding = np.zeros((extra, self.max_len + 1), dtype=np.int64)
            self.sequences_ = np.vstack([self.sequences_, padding])
        old_items = self._items_in_net
        if n_items > self.net_.capacity:
            capacity = max(n_items, int(_GROWTH * self.net_.capacity), 16)
            # Seeded by the first new row, so growth does not depend on the call history.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.net_.capacity)
            self._grow_parameter(capacity, generator)
        if len(self.item_counts_) < self.net_.capacity + 1:
            extra = self.net_.capacity + 1 - len(self.item_counts_)
            self.item_counts_ = torch.cat([self.item_counts_, self.item_counts_.new_zeros(extra)])
        self._items_in_net = n_items
        self._fill_text(np.arange(old_items, n_items))
        self._moved.append(np.arange(old_items, n_items))
        self._changed()

    def _grow_parameter(self, capacity: int, generator: torch.Generator) -> None:
        """Grow the id table and carry its optimiser moments over (zeros for new rows)."""
        old = self.net_.item_embedding
        moments = self.optimizer_.state.pop(old, {})
        self.net_.grow_items(capacity, generator)
        new = self.net_.item_embedding
        new.requires_grad_(old.requires_grad)  # LazyAdam's table (it grows its own state)
        for group in self.optimizer_.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        for name, value in moments.items():
            if torch.is_tensor(value) and value.shape == old.shape:
                padding = torch.zeros(new.shape[0] - old.shape[0], *value.shape[1:])
                value = torch.cat([value, padding.to(value)])
            moments[name] = value
        if moments:
            self.optimizer_.state[new] = moments

    def _changed(self) -> None:
        """Parameters or tables changed: drop the cached item representations and the
        emptied histories' hidden states."""
        self._item_cache: torch.Tensor | None = None
        self._empty_cache: torch.Tensor | None = None

    # -------------------------------------------------------------- learning

    def start_fit(self, events: EventBatch) -> tuple[np.ndarray, np.ndarray]:
        """The first half of :meth:`fit`, for a trainer that runs the epochs itself (the
        distributed one, :mod:`lifelong_rec.train`): forget everything, then learn the
        events' ids, histories and sequences, without a step.

        Returns
        -------
        windows : array of int64, shape (n_windows, max_len + 1)
            Every training window (item rows, 0 = padding), as :meth:`fit` trains on them.
        users : array of int64, shape (n_windows,)
            The user index of each window.
        """
        if not isinstance(events, EventBatch):
            raise TypeError(f"events must be an EventBatch, not {type(events).__name__}")
        self._reset()
        self.updates_ += 1
        self.training_log_: list[dict[str, float]] = []
        return self._training_windows(self._index(self._admissible(events)))

    def _training_windows(self, events: IndexedEvents) -> tuple[np.ndarray, np.ndarray]:
        """Set every user's sequence from the events; the windows and their users."""
        positive = events.positive
        users, items = events.user[positive], events.item[positive]
        order = np.lexsort((events.timestamp[positive], users))
        users, items = users[order], items[order] + 1
        windows, owners = _windows_and_users(users, items, self.max_len + 1)
        self.sequences_[:] = 0
        self._append(users, items)
        return windows, owners

    def _fit(self, events: IndexedEvents) -> None:
        windows, _ = self._training_windows(events)
        self.training_log_ = []
        for epoch in range(self.epochs):
            started = time.perf_counter()
            shuffled = np.random.default_rng([self.seed, epoch]).permutation(len(windows))
            total, targets = torch.zeros((), device=self._device), 0
            for start in range(0, len(shuffled), self.batch_size):
                loss, count = self.train_step(windows[shuffled[start : start + self.batch_size]])
                total, targets = total + loss * count, targets + count
            mean = float(total) / max(targets, 1)  # one device sync per epoch
            seconds = time.perf_counter() - started
            self.training_log_.append({"epoch": epoch + 1, "loss": mean, "seconds": seconds,
                                       "targets_per_second": targets / seconds})  # fmt: skip
        self._moved = []
        self._sync_index()  # every item moved: the clusters are trained again

    def _learn(self, events: IndexedEvents) -> None:
        positive = events.positive
        users, items = events.user[positive], events.item[positive]
        order = np.lexsort((events.timestamp[positive], users))
        self._append(users[order], items[order] + 1)
        if self.update_steps and len(users):
            self._train_users(np.unique(users), self.update_steps)
            self._refill_index()
        else:
            self._sync_moved()

    def _replay(self, users: np.ndarray, items: np.ndarray) -> None:
        self._train_users(np.unique(users), 1)
        self._refill_index()

    def _sync_moved(self) -> None:
        """Move the items whose representation changed alone (new ones, those at their
        first event) in the approximate index."""
        if self._moved:
            self._sync_index(np.concatenate(self._moved))
            self._moved = []

    def _refill_index(self) -> None:
        """The parameters moved every item's representation: all back in the index, in the
        clusters trained before."""
        self._moved = []
        if self.index_ is not None:
            self.index_.refill(self._item_table())

    def _anchor(self, strength: float) -> None:
        self._distill = strength
        if strength == 0:
            self._teacher = None
            return
        teacher = copy.deepcopy(self.net_).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self._teacher = (teacher, len(self.items_))

    def adopt_network(self, trained: SequentialTransformer) -> None:
        """Take the network of ``trained`` (a model of the same shape trained elsewhere: the
        distributed trainer's) and keep everything else: the users' sequences, the ids, the
        histories and the items ``trained`` does not know (their rows stay as they are).

        The id rows are matched by item id. The optimiser starts afresh (its moments were of
        the old weights). While distilling (after ``anchor``), the adopted network becomes
        the snapshot distilled from, with the same strength: later steps are pulled toward
        the trained weights, not back to the replaced ones.

        Raises
        ------
        ValueError
            If ``trained`` is not a transformer of the same shape (width, depth, heads,
            length, text encoder).
        """
        self._check_fitted()
        if not isinstance(trained, SequentialTransformer) or not trained.is_fitted:
            raise ValueError("adopt_network needs a fitted SequentialTransformer")
        shape = ("max_len", "dim", "layers", "heads", "text_encoder")
        mismatch = [n for n in shape if getattr(self, n) != getattr(trained, n)]
        if mismatch:
            differences = [f"{n} ({getattr(trained, n)!r}, not {getattr(self, n)!r})"
                           for n in mismatch]  # fmt: skip
            raise ValueError(
                "adopt_network: the trained model differs in " + ", ".join(differences)
            )
        mine = np.arange(len(self.items_))
        theirs = trained.items_.lookup(self.items_.ids(mine))
        found = theirs >= 0
        source = trained.net_.state_dict()
        with torch.no_grad():
            for name, value in self.net_.state_dict().items():
                if name in ("item_embedding", "text", "has_text", "interacted"):
                    continue  # per item: matched by id below (text and flags stay ours)
                value.copy_(source[name].to(value.device))
            rows = torch.as_tensor(mine[found] + 1, device=self._device)
            their_rows = torch.as_tensor(theirs[found] + 1, device=trained.net_.text.device)
            self.net_.item_embedding[rows] = trained.net_.item_embedding[their_rows].to(
                self._device
            )
        self._new_optimizers()
        self._changed()
        self._moved = []
        self._sync_index()  # another network: the clusters are trained again
        if self._teacher is not None:
            self._anchor(self._distill)

    def _append(self, users: np.ndarray, rows: np.ndarray) -> None:
        """Append item ``rows`` to the users' sequences; both sorted by user, then time."""
        if len(users):
            _append_in_place(self.sequences_, users, rows)
            touched_rows, counts = np.unique(rows, return_counts=True)
            touched = torch.as_tensor(touched_rows, device=self._device)
            self.item_counts_[touched] += torch.as_tensor(counts, device=self._device).double()
            self._counted += float(len(rows))
            first_time = touched[~self.net_.interacted[touched]]
            if len(first_time):  # their id embeddings start to count
                self.net_.interacted[first_time] = True
                self._moved.append(first_time.cpu().numpy() - 1)
                self._changed()

    def _train_users(self, users: np.ndarray, steps: int) -> None:
        """``steps`` optimiser steps on the latest window of each user, in chunks."""
        for start in range(0, len(users), self.batch_size):
            windows = self.sequences_[users[start : start + self.batch_size]]
            for _ in range(steps):
                self.train_step(windows)

    def train_step(
        self,
        windows: np.ndarray,
        forward: Callable[..., torch.Tensor] | None = None,
        seed_offset: int = 0,
    ) -> tuple[torch.Tensor, int]:
        """One optimiser step on windows of item rows, shape (batch, max_len + 1); returns
        the loss (a detached tensor, not synced) and the number of targets.

        ``forward(inputs, targets, valid)`` computes the loss in place of :meth:`_loss` (the
        distributed trainer's, through DistributedDataParallel); it is called even when the
        windows hold no target, as every process must join every step. ``seed_offset``
        shifts the step's random stream (dropout, negatives): one per process.
        """
        valid_np = (windows[:, :-1] > 0) & (windows[:, 1:] > 0)
        count = int(valid_np.sum())
        if not count and forward is None:
            return torch.zeros((), device=self._device), 0
        rows = torch.as_tensor(windows, device=self._device)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        valid = torch.as_tensor(valid_np, device=self._device)
        self.steps_[0] += 1
        self.net_.train()
        seed = self.seed * 1_000_003 + int(self.steps_[0]) + seed_offset
        self._touched = None
        with seeded(seed, self._device), self._autocast():
            loss = (forward or self._loss)(inputs, targets, valid)
        self.optimizer_.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_.step()
        if self.item_optimizer_ is not None and self._touched is not None:
            rows, ids = self._touched
            gradient = torch.zeros_like(ids) if ids.grad is None else ids.grad
            if self._reduce_rows is not None:
                rows, gradient = self._reduce_rows(rows, gradient)
            self.item_optimizer_.step(self.net_.item_embedding, rows, gradient)
        self._touched = None
        self._changed()
        return loss.detach(), count

    def _loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        valid: torch.Tensor,
        divide_by: float | None = None,
    ) -> torch.Tensor:
        """The training loss of a batch: the mean over its valid positions, or (with
        ``divide_by``) their sum divided by it (a distributed step divides by the targets
        of every process, so the averaged gradients are those of the whole batch)."""
        # Items nobody has interacted with yet (known from the catalogue only) are left out
        # of the softmax: as permanent negatives they would teach the text projection that
        # whatever reads like a new item is never wanted, the opposite of what cold start needs.
        n, device = len(self.items_), self._device
        wanted = targets[valid]
        reduction = "mean" if divide_by is None else "sum"
        if self.loss == "softmax":
            interacted = self.net_.interacted[1 : n + 1]
            rows = torch.arange(n + 1, device=device)
            items = self.net_.items(rows, self._kept_ids(rows))
            hidden = self.net_.encode(inputs, items)[valid]  # (positions, dim)
            logits = (hidden @ items[1:].T).float().masked_fill(~interacted, float("-inf"))
            loss = F.cross_entropy(logits, wanted - 1, reduction=reduction)
            candidates, vectors = rows[1:], items[1:]
        else:
            # Only the rows this step touches are represented: the inputs, the targets and
            # the negatives (shared by the batch), so a step's cost does not grow with n.
            candidates, log_q = self._candidates(wanted)
            pad = torch.zeros(1, dtype=torch.long, device=device)
            rows = torch.unique(torch.cat([pad, inputs.flatten(), wanted, candidates]))
            ids = None  # read from the table, whose gradient dense Adam takes whole
            if self.item_optimizer_ is not None:
                # these rows' id embeddings, as a leaf whose gradient LazyAdam reads (no
                # gradient of the whole table)
                ids = self.net_.item_embedding.detach()[rows].requires_grad_()
                self._touched = (rows, ids)
            items = self.net_.items(rows, self._kept_ids(rows), ids)
            local_inputs = torch.searchsorted(rows, inputs.contiguous())
            hidden = self.net_.encode(local_inputs, items)[valid]
            vectors = items[torch.searchsorted(rows, candidates)]
            positive = (hidden * items[torch.searchsorted(rows, wanted)]).sum(-1)
            usable = self.net_.interacted[candidates]
            loss = sampled_softmax_loss(
                hidden, wanted, positive, candidates, vectors, usable, log_q, reduction
            )
        if divide_by is not None:
            loss = loss / divide_by
        if self._teacher is not None and self._distill > 0:
            distillation = self._distillation(inputs, valid, hidden, candidates, vectors, reduction)
            loss = loss + self._distill * distillation / (divide_by or 1.0)
        return loss

    def _candidates(self, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sampled softmax's candidate rows (distinct, sorted) and the log of each one's
        probability of being drawn (None without the log-Q correction, or when every item
        is a candidate). ``wanted``: the batch's target rows, one per position."""
        n, device = len(self.items_), self._device
        if self.negatives >= n:  # every item: the full softmax
            return torch.arange(1, n + 1, device=device), None
        # Drawn from every row (those nobody has interacted with are masked out later): a
        # draw costs the same for any catalogue, where drawing from the interacted rows only
        # would need their list (O(n)) at every step. Seeded by the step alone, so that the
        # processes of a distributed step draw the same ones.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps_[0]))
        drawn = torch.randint(1, n + 1, (self.negatives,), generator=generator).to(device)
        if self.in_batch_negatives and self._gather_targets is not None:
            wanted = self._gather_targets(wanted)  # every process's targets
        parts = [wanted, drawn] if self.in_batch_negatives else [drawn]
        candidates = torch.unique(torch.cat(parts))
        if not self.log_q_correction:
            return candidates, None
        share = self.item_counts_[candidates] / max(self._counted, 1.0)
        probability = inclusion_probability(
            share, len(wanted) if self.in_batch_negatives else 0, self.negatives, n
        )
        return candidates, probability.log().float()

    def _kept_ids(self, rows: torch.Tensor) -> torch.Tensor | None:
        """Id dropout: False for the rows (with text) whose id embedding this step drops."""
        if self.id_dropout == 0 or self.net_.text_projection is None:
            return None
        drawn = torch.rand(len(rows), device=rows.device) >= self.id_dropout
        return drawn | ~self.net_.has_text[rows]

    def _distillation(
        self,
        inputs: torch.Tensor,
        valid: torch.Tensor,
        hidden: torch.Tensor,
        candidates: torch.Tensor,
        vectors: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """KL(snapshot || model) of the next-item distributions at the valid positions, over
        the step's ``candidates`` (item rows; the model's ``vectors`` of them) that the
        snapshot was trained on: every item after a full-softmax step, the sampled ones after
        a sampled step, so that its cost does not grow with the catalogue either.
        ``reduction``: "mean" over positions, or their "sum"."""
        assert self._teacher is not None  # called only while distilling from a snapshot
        teacher, known = self._teacher
        kept = candidates <= known
        rows, vectors = candidates[kept], vectors[kept]
        support = teacher.interacted[rows]  # the items the snapshot was trained on
        with torch.no_grad():
            old_inputs = inputs.masked_fill(inputs > known, 0)  # items the snapshot never saw
            # the input rows alone (and the padding row), renumbered in their order
            read = torch.unique(torch.cat([old_inputs.new_zeros(1), old_inputs.flatten()]))
            local = torch.searchsorted(read, old_inputs.contiguous())
            teacher_hidden = teacher.encode(local, teacher.items(read))[valid]
            logits = (teacher_hidden @ teacher.items(rows).T).float()[:, support]
            target = F.log_softmax(logits, dim=-1)
        logits = (hidden @ vectors.T).float()[:, support]
        student = F.log_softmax(logits, dim=-1)
        divergence = F.kl_div(student, target, log_target=True, reduction="sum")
        return divergence / max(len(hidden), 1) if reduction == "mean" else divergence

    # -------------------------------------------------------------- scoring

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        items = self._items()
        chosen = items[1 : len(self.items_) + 1][_as_torch_index(item_index, self._device)]
        scores = []
        for start in range(0, len(user_index), _SCORE_USERS):
            hidden = self._last_hidden(user_index[start : start + _SCORE_USERS], items)
            with torch.no_grad():
                scores.append((hidden @ chosen.T).float().cpu().numpy())
        if not scores:
            return np.zeros((0, chosen.shape[0]), dtype=np.float32)
        return np.concatenate(scores).astype(np.float32, copy=False)

    def _items(self) -> torch.Tensor:
        """Every item's representation in eval mode, cached until the parameters change."""
        if self._item_cache is None:
            self.net_.eval()
            with torch.no_grad(), self._autocast():
                self._item_cache = self.net_.items()[: len(self.items_) + 1]
        return self._item_cache

    def _empty(self) -> torch.Tensor:
        """The last hidden state of an emptied history (zero item vectors, positions kept)
        of every length 0 to ``max_len``, shape (max_len + 1, dim): the integrated-gradients
        baseline. It depends on the length alone (histories are right-aligned), so one
        forward pass serves every request until the parameters change; it is built aside
        and stored whole, as threads may read a served model at once."""
        if self._empty_cache is None:
            length = self.sequences_.shape[1] - 1
            present = (
                torch.arange(length, device=self._device)
                >= length - torch.arange(length + 1, device=self._device)[:, None]
            )  # row l: the last l positions
            zeros = torch.zeros(length + 1, length, self.dim, device=self._device)
            self.net_.eval()
            with torch.no_grad():
                self._empty_cache = self.net_.encode_last(zeros, present)
        return self._empty_cache

    def _last_hidden(self, users: np.ndarray, items: torch.Tensor) -> torch.Tensor:
        sequences = torch.as_tensor(self.sequences_[users, 1:], device=self._device)
        self.net_.eval()
        with torch.no_grad(), self._autocast():
            return self.net_.encode(sequences, items)[:, -1]

    def _item_table(self) -> np.ndarray:
        return self._items()[1 : len(self.items_) + 1].float().cpu().numpy()

    def _queries(self, user_index: np.ndarray) -> np.ndarray:
        return self._last_hidden(user_index, self._items()).float().cpu().numpy()

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """Integrated gradients of each item's score over the history items' input vectors.

        Per block of users, one forward pass runs the ``explain_steps`` scaled copies of
        every sequence (the last block for the last position only), and one vmapped backward
        pass gives every item's gradients. An item nobody has interacted with is scored by
        its text alone, so its reasons are of kind "text".
        """
        blocks = [
            self._integrated_gradients(users[start : start + _EXPLAIN_USERS],
                                       items[start : start + _EXPLAIN_USERS])
            for start in range(0, len(users), _EXPLAIN_USERS)
        ]  # fmt: skip
        history, weights = _merge_repeats(
            np.concatenate([block[0] for block in blocks]),
            np.concatenate([block[1] for block in blocks]),
        )
        interacted = self.net_.interacted[torch.as_tensor(items + 1, device=self._device)]
        kinds = np.where(interacted.cpu().numpy(), "history", "text").astype(object)
        method = f"integrated gradients, {self.explain_steps} Gauss-Legendre nodes"
        baseline = np.concatenate([block[2] for block in blocks])
        return Attribution(method, history, weights, kinds, popularity=baseline)

    def _integrated_gradients(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(history (n, L) with -1 pads, weights (n, L, k), baseline scores (n, k)), one
        history column per position."""
        n = len(users)
        steps = self.explain_steps
        sequences = torch.as_tensor(self.sequences_[users, 1:], device=self._device)  # (n, L)
        present = sequences > 0
        if self.net_.training:  # eval() walks every module: 0.25 ms a request
            self.net_.eval()
        with torch.no_grad():  # the rows needed, not the whole catalogue's (1 ms on ML-100K)
            inputs = self.net_.items(sequences)  # (n, L, d)
            targets = self.net_.items(torch.as_tensor(items + 1, device=self._device))  # (n, k, d)
        alphas, quadrature = _gauss_legendre(steps, inputs)
        scaled = (alphas[None, :, None, None] * inputs[:, None]).flatten(0, 1)  # (n S, L, d)
        scaled.requires_grad_(True)
        hidden = self.net_.encode_last(scaled, present.repeat_interleave(steps, dim=0))
        cotangents = targets.transpose(0, 1).repeat_interleave(steps, dim=1)  # (k, n S, d)
        # All k items' gradients in one vmapped backward pass over the shared forward graph
        # (the forward now runs the last block for the last position only): for a request
        # (one user) this takes 2/3 of the time of one backward pass per item, and as long
        # for blocks of 4 users (measured on a 2-core CPU, 4 nodes, ML-100K sizes).
        (gradients,) = torch.autograd.grad(
            hidden, scaled, grad_outputs=cotangents, is_grads_batched=True
        )  # (k, n S, L, d)
        # the path integral of the gradients: (k, n, L, d)
        integral = (gradients.unflatten(1, (n, steps)) * quadrature[:, None, None]).sum(dim=2)
        attribution = (inputs[None] * integral).sum(dim=-1).permute(1, 2, 0)  # (n, L, k)
        history = sequences.cpu().numpy() - 1  # -1 at padding
        weights = attribution.detach().double().cpu().numpy() * (history >= 0)[:, :, None]
        with torch.no_grad():  # the baseline: what the model scores for an emptied history
            empty = self._empty()[present.sum(dim=1)]
            baseline = (targets @ empty[:, :, None])[:, :, 0].double().cpu().numpy()
        return history, weights, baseline

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Scores from the sequence, then from the sequence without every occurrence of each
        removed item (older items close up behind it)."""
        sequence = self.sequences_[user, 1:]
        variants = np.repeat(sequence[None, :], len(removed) + 1, axis=0)
        variants[1:][sequence[None, :] == removed[:, None] + 1] = 0
        order = np.argsort(variants > 0, axis=1, kind="stable")  # padding first: right-align
        variants = np.take_along_axis(variants, order, axis=1)
        vectors = self._items()
        self.net_.eval()
        with torch.no_grad(), self._autocast():
            hidden = self.net_.encode(torch.as_tensor(variants, device=self._device), vectors)
            chosen = vectors[torch.as_tensor(items + 1, device=self._device)]
            return (hidden[:, -1] @ chosen.T).double().cpu().numpy()

    def _item_similarity(self, item: int) -> np.ndarray:
        vectors = self._items()[1 : len(self.items_) + 1].float()
        vectors = torch.nn.functional.normalize(vectors, dim=1)
        return (vectors @ vectors[item]).cpu().numpy()

    @contextmanager
    def _autocast(self) -> Iterator[None]:
        if self._device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()}
        parameters = list(self.net_.parameters())
        for position, parameter in enumerate(parameters):
            moments = self.optimizer_.state.get(parameter, {})
            lazy = self.item_optimizer_
            if parameter is self.net_.item_embedding and lazy is not None and lazy.step_count:
                moments = lazy.state_dict()  # the same names as Adam's, and last_step
            for name, value in moments.items():
                state[f"optimizer.{position}.{name}"] = torch.as_tensor(value).cpu().numpy()
        state |= {"sequences": self.sequences_, "steps": self.steps_,
                  "item_counts": self.item_counts_.cpu().numpy()}  # fmt: skip
        state |= self._index_state()
        if self._catalog is not None:
            state |= {"catalog.items": self._catalog.items,
                      "catalog.embeddings": self._catalog.embeddings}  # fmt: skip
        return state

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        capacity = len(arrays["net.item_embedding"]) - 1
        generator = torch.Generator().manual_seed(self.seed)
        self._grow_parameter(capacity, generator)
        self.net_.load_state_dict(
            {k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")}
        )
        self.net_.to(self._device)
        self._new_optimizers()
        for position, parameter in enumerate(self.net_.parameters()):
            prefix = f"optimizer.{position}."
            moments = {k.removeprefix(prefix): torch.as_tensor(v, device=self._device)
                       for k, v in arrays.items() if k.startswith(prefix)}  # fmt: skip
            if moments and parameter is self.net_.item_embedding and self.item_optimizer_:
                # LazyAdam's state, or dense Adam's of a model saved before it
                self.item_optimizer_.load_state_dict(moments)
            elif moments:
                moments.pop("last_step", None)  # a lazy state taken as dense Adam's
                if not self._fused:  # unfused Adam keeps its step count on the CPU
                    moments["step"] = moments["step"].cpu()
                self.optimizer_.state[parameter] = moments
        self.sequences_ = arrays["sequences"].astype(np.int64)
        self.steps_ = arrays["steps"].astype(np.int64)
        if "item_counts" in arrays:
            counts = torch.as_tensor(arrays["item_counts"], dtype=torch.float64)
        else:  # saved before the counts were kept: each item's users stand for its events
            counts = torch.zeros(capacity + 1, dtype=torch.float64)
            column = np.bincount(self.history_.state()["indices"], minlength=len(self.items_))
            counts[1 : len(column) + 1] = torch.as_tensor(column, dtype=torch.float64)
        self.item_counts_ = counts.to(self._device)
        self._counted = float(counts.sum())
        self._items_in_net = len(self.items_)
        if "catalog.items" in arrays:
            if self.text_encoder is None:
                raise ValueError("the saved state holds a catalogue, but text_encoder is None")
            self._set_catalog(
                ItemTexts(
                    items=arrays["catalog.items"],
                    embeddings=arrays["catalog.embeddings"].astype(np.float32),
                    encoder=self.text_encoder,
                )
            )
        self._changed()
        self._moved = []
        self._restore_index(arrays)


# ------------------------------------------------------------------------------ helpers


def _as_torch_index(index: np.ndarray | slice, device: torch.device) -> torch.Tensor | slice:
    return index if isinstance(index, slice) else torch.as_tensor(index, device=device)


def _windows(users: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """Training windows of ``width`` items, right-aligned and zero-padded: for each user (rows
    sorted by user, then time) the windows ending at the last item, then ``width - 1`` items
    earlier, and so on, so every item but a user's first is a target exactly once."""
    return _windows_and_users(users, rows, width)[0]


def _windows_and_users(
    users: np.ndarray, rows: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_windows`, and the user of each window."""
    if not len(users):
        return np.zeros((0, width), dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    per_user = np.maximum(1, -(-(lengths - 1) // (width - 1)))  # ceil((n - 1) / (width - 1))
    owner = np.repeat(np.arange(len(starts)), per_user)
    back = np.arange(len(owner)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    ends = starts[owner] + lengths[owner] - 1 - back * (width - 1)  # inclusive end of each
    positions = ends[:, None] - np.arange(width - 1, -1, -1)
    inside = positions >= starts[owner][:, None]
    return np.where(inside, rows[np.maximum(positions, 0)], 0), users[starts[owner]]


def _append_in_place(sequences: np.ndarray, users: np.ndarray, rows: np.ndarray) -> None:
    """Append ``rows`` at the right of their users' rows of ``sequences`` (vectorised).

    ``users`` and ``rows`` are sorted by user, then time; only each user's last ``width``
    new items can survive, so at most ``2 * width`` columns are ever built.
    """
    width = sequences.shape[1]
    unique, starts, counts = np.unique(users, return_index=True, return_counts=True)
    owner = np.repeat(np.arange(len(unique)), counts)
    from_end = np.repeat(counts, counts) - (np.arange(len(users)) - np.repeat(starts, counts))
    kept = np.minimum(counts, width)
    keep = from_end <= width
    combined = np.zeros((len(unique), 2 * width), dtype=np.int64)
    combined[:, :width] = sequences[unique]
    combined[owner[keep], width + kept[owner[keep]] - from_end[keep]] = rows[keep]
    sequences[unique] = np.take_along_axis(combined, kept[:, None] + np.arange(width), axis=1)


def _gauss_legendre(steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes in (0, 1) and weights (summing to 1) of the ``steps``-point Gauss-Legendre rule,
    as tensors of ``like``'s dtype and device.

    The rule integrates polynomials of degree up to ``2 steps - 1`` exactly; along the
    straight path from the emptied history the network's gradients are smooth (layer norms,
    softmaxes, GELUs), so a few nodes integrate them about as well as dozens of midpoint
    steps (measured on ML-100K: see bench/results/explain-ml-100k-transformer.json).
    """
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (
        torch.as_tensor((nodes + 1.0) / 2.0, dtype=like.dtype, device=like.device),
        torch.as_tensor(weights / 2.0, dtype=like.dtype, device=like.device),
    )


def _merge_repeats(history: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One column per distinct item of each row: an item read twice gets the sum of its
    positions' weights (vectorised). ``history`` (n, L) with -1 pads; ``weights`` (n, L, k)."""
    n, length = history.shape
    order = np.argsort(history, axis=1, kind="stable")
    ordered = np.take_along_axis(history, order, axis=1)
    ordered_weights = np.take_along_axis(weights, order[:, :, None], axis=1)
    first = np.ones((n, length), dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = np.cumsum(first, axis=1) - 1  # the distinct item's column
    merged = np.full((n, length), -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, length))
    merged[rows, slot] = ordered
    summed = np.zeros_like(weights)
    np.add.at(summed, (rows, slot), ordered_weights)
    summed[merged < 0] = 0.0
    return merged, summed


def _merge(old: ItemTexts | None, new: ItemTexts) -> ItemTexts:
    """``new`` added to ``old``; ``new`` wins for ids in both."""
    if old is None:
        return new
    stale = IdIndex(new.items).lookup(old.items) >= 0
    return ItemTexts(
        items=np.concatenate([old.items[~stale], new.items]),
        embeddings=np.concatenate([old.embeddings[~stale], new.embeddings]).astype(np.float32),
        encoder=new.encoder,
    )
