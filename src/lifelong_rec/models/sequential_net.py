"""The network behind :class:`SequentialTransformer`: item representations, a causal encoder,
the sampled softmax's loss, and the lazy Adam that updates only the item rows a step touches.

Kept apart from the recommender so the torch code reads on its own. Index 0 of every item table
is the padding row; item ``i`` of the model lives at row ``i + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class CausalBlock(nn.Module):
    """A pre-norm transformer block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, length, dim); ``mask``: (batch, 1, length, length), True = may attend."""
        batch, length, dim = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.residual_dropout(self.out(attended.transpose(1, 2).reshape_as(x)))
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))

    def last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` at the last position alone, (batch, 1, dim): keys and values from
        every position, the query, attention and MLP only for the last one. ``mask``:
        (batch, 1, 1, length), the last row of :meth:`forward`'s mask."""
        batch, length, dim = x.shape
        width = dim // self.heads
        normed = self.attention_norm(x)
        weight, bias = self.qkv.weight, self.qkv.bias  # rows: queries, keys, values
        q = F.linear(normed[:, -1:], weight[:dim], bias[:dim])
        q = q.view(batch, 1, self.heads, width).transpose(1, 2)
        k, v = (
            F.linear(normed, weight[dim:], bias[dim:])
            .view(batch, length, 2, self.heads, width)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x[:, -1:] + self.residual_dropout(
            self.out(attended.transpose(1, 2).reshape(batch, 1, dim))
        )
        return x + self.residual_dropout(self.mlp(self.mlp_norm(x)))


class SequenceNet(nn.Module):
    """Item representations (id embedding + projected text embedding) and a causal encoder.

    Parameters
    ----------
    capacity : int
        Item rows allocated (besides the padding row); grown with :meth:`grow_items`.
    dim, layers, heads, max_len : int
    dropout : float
    text_dim : int
        Width of the text embeddings; 0 for an id-only model.
    init_std : float
        Standard deviation of the initial id embeddings.
    """

    # Buffers (register_buffer), declared for the type checker: nn.Module's __getattr__
    # would type them Tensor | Module.
    text: torch.Tensor
    has_text: torch.Tensor
    interacted: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        layers: int,
        heads: int,
        max_len: int,
        dropout: float,
        text_dim: int,
        init_std: float,
    ) -> None:
        super().__init__()
        self.init_std = init_std
        self.item_embedding = nn.Parameter(torch.zeros(capacity + 1, dim))
        self.position_embedding = nn.Embedding(max_len, dim)
        self.text_projection = nn.Linear(text_dim, dim) if text_dim else None
        self.register_buffer("text", torch.zeros(capacity + 1, max(text_dim, 1)))
        self.register_buffer("has_text", torch.zeros(capacity + 1, dtype=torch.bool))
        # An item's id embedding counts (and learns) only once someone has interacted with
        # it: until then the item is its text alone, and full-softmax steps cannot push the
        # id rows of untouched items down while they wait for their first interaction.
        self.register_buffer("interacted", torch.zeros(capacity + 1, dtype=torch.bool))
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)

    @property
    def capacity(self) -> int:
        return self.item_embedding.shape[0] - 1

    # -------------------------------------------------------------- items

    def items(
        self,
        rows: torch.Tensor | None = None,
        keep_id: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Representations of item rows (all rows when None): id part + projected text part.

        The id part counts for items someone has interacted with; ``keep_id`` (bool, one per
        row) also drops it where False (id dropout, training only): the text part must then
        carry the item alone, as it does for a new item. ``ids``: the id embeddings of
        ``rows``, already gathered (a sampled step's, whose gradient :class:`LazyAdam`
        reads); by default they are read from the table here.
        """
        if ids is None:
            ids = self.item_embedding if rows is None else self.item_embedding[rows]
        use_id = self.interacted if rows is None else self.interacted[rows]
        if keep_id is not None:
            use_id = use_id & keep_id
        ids = ids * use_id.unsqueeze(-1)
        if self.text_projection is None:
            return ids
        text = self.text if rows is None else self.text[rows]
        has_text = self.has_text if rows is None else self.has_text[rows]
        return ids + self.text_projection(text) * has_text.unsqueeze(-1)

    # -------------------------------------------------------------- sequences

    def encode(self, sequences: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch, length, dim) of right-aligned ``sequences`` of item rows
        (0 = padding), with ``items`` the representation of every row."""
        return self.encode_embedded(items[sequences], sequences > 0)

    def encode_embedded(self, embedded: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Hidden states from item vectors already looked up (integrated gradients scale
        these). ``present``: (batch, length) bool, False at padding."""
        length = embedded.shape[1]
        positions = self.position_embedding.weight[-length:]
        x = (embedded + positions) * present.unsqueeze(-1)
        x = self.input_dropout(x)
        for block in self.blocks:
            x = block(x, _attention_mask(present))
        return self.final_norm(x)

    def encode_last(self, embedded: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``encode_embedded(embedded, present)[:, -1]``, shape (batch, dim), with the last
        block run for the last position alone: what explaining a score needs, at about 60%
        of the arithmetic of the full pass (2 blocks) in its forward and backward."""
        length = embedded.shape[1]
        positions = self.position_embedding.weight[-length:]
        x = (embedded + positions) * present.unsqueeze(-1)
        x = self.input_dropout(x)
        mask = _attention_mask(present)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        final = cast(CausalBlock, self.blocks[-1])
        return self.final_norm(final.last(x, mask[:, :, -1:])[:, 0])

    # -------------------------------------------------------------- growth

    def grow_items(self, capacity: int, generator: torch.Generator) -> None:
        """Make room for ``capacity`` items; new id rows are drawn from ``generator``."""
        old = self.item_embedding
        extra = capacity - self.capacity
        if extra <= 0:
            return
        fresh = torch.randn(extra, old.shape[1], generator=generator) * self.init_std
        self.item_embedding = nn.Parameter(torch.cat([old.data, fresh.to(old.device)]))
        for name in ("text", "has_text", "interacted"):
            buffer = getattr(self, name)
            padding = torch.zeros(extra, *buffer.shape[1:], dtype=buffer.dtype)
            setattr(self, name, torch.cat([buffer, padding.to(buffer.device)]))


class LazyAdam:
    """Adam (or AdamW) for an embedding table of which a step touches a few rows, at a cost
    that does not grow with the table (as TensorFlow Addons' LazyAdam, torch's SparseAdam).

    A step is given the rows it touched and their gradient, and updates those rows' moments
    and values alone. The moments of a row are first decayed by the betas raised to the
    steps it missed, so they are what dense Adam's would be (a dense step with a zero
    gradient only decays them), and the bias correction counts every step, as dense Adam's
    does: on a row's first touch, and on a row touched at every step, the update is dense
    Adam's. What it leaves out is the momentum's movement of a row in the steps that do not
    touch it (dense Adam keeps moving it). Weight decay: AdamW's decoupled decay of the
    missed steps is caught up on the next touch; Adam's L2 term (added to the gradient)
    reaches touched rows only.

    State (:meth:`state_dict`, saved with the model): ``step`` (steps taken), ``exp_avg``
    and ``exp_avg_sq`` (shape (rows, dim), as Adam's) and ``last_step`` (int64, shape
    (rows,): the step at which each row's moments were last brought up to date). It grows
    with the table, new rows with zero moments.

    Parameters
    ----------
    lr : float
    betas : (float, float)
    eps : float
    weight_decay : float
    decoupled : bool
        AdamW's decay (the values shrink by ``1 - lr * weight_decay`` a step) rather than
        Adam's L2 term.
    """

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled = decoupled
        self.step_count = 0
        self.exp_avg = torch.zeros(0, 0)
        self.exp_avg_sq = torch.zeros(0, 0)
        self.last_step = torch.zeros(0, dtype=torch.int64)

    @torch.no_grad()
    def step(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One step on ``table`` (shape (n, dim), updated in place): ``rows`` (int64, shape
        (k,), distinct) got gradient ``grad`` (shape (k, dim)); the other rows are untouched."""
        self._fit(table)
        self.step_count += 1
        step = self.step_count
        beta1, beta2 = self.betas
        missed = (step - 1 - self.last_step[rows]).unsqueeze(1)  # steps without this row
        values = table[rows]
        if self.weight_decay and self.decoupled:
            values.mul_(torch.pow(1.0 - self.lr * self.weight_decay, missed + 1))
        elif self.weight_decay:
            grad = grad.add(values, alpha=self.weight_decay)
        exp_avg = self.exp_avg[rows] * torch.pow(beta1, missed)
        exp_avg_sq = self.exp_avg_sq[rows] * torch.pow(beta2, missed)
        # as torch.optim.Adam's single-tensor step, on the rows
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        values.addcdiv_(exp_avg, denominator, value=-self.lr / (1 - beta1**step))
        table[rows] = values
        self.exp_avg[rows] = exp_avg
        self.exp_avg_sq[rows] = exp_avg_sq
        self.last_step[rows] = step

    def _fit(self, table: torch.Tensor) -> None:
        """Grow the state to the table's rows (zero moments, up to date as of now)."""
        extra = table.shape[0] - len(self.last_step)
        if extra <= 0:
            return
        if self.exp_avg.shape[1:] != table.shape[1:]:  # the first step: no state yet
            self.exp_avg = table.new_zeros(0, *table.shape[1:])
            self.exp_avg_sq = table.new_zeros(0, *table.shape[1:])
        zeros = table.new_zeros(extra, *table.shape[1:])
        self.exp_avg = torch.cat([self.exp_avg.to(table), zeros])
        self.exp_avg_sq = torch.cat([self.exp_avg_sq.to(table), zeros])
        now = torch.full((extra,), self.step_count, dtype=torch.int64, device=table.device)
        self.last_step = torch.cat([self.last_step.to(table.device), now])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"step": torch.tensor(self.step_count, dtype=torch.int64),
                "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "last_step": self.last_step}  # fmt: skip

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`, or a dense Adam's state of the table (no
        ``last_step``: its moments are up to date at its step)."""
        self.step_count = int(state["step"])
        self.exp_avg = state["exp_avg"].clone()
        self.exp_avg_sq = state["exp_avg_sq"].clone()
        last = state.get("last_step")
        if last is None:
            last = torch.full((len(self.exp_avg),), self.step_count, dtype=torch.int64)
        self.last_step = last.to(torch.int64).to(self.exp_avg.device).clone()


def inclusion_probability(
    share: torch.Tensor, positions: int, negatives: int, n_items: int
) -> torch.Tensor:
    """The probability that an item is among a step's candidates, float64.

    The candidates are the targets of ``positions`` batch positions (each, approximately, an
    independent draw of an item with probability ``share``: its part of the positive events)
    and ``negatives`` uniform draws among ``n_items`` rows, with replacement; an item is a
    candidate when any draw gives it: ``1 - (1 - share)^positions (1 - 1/n_items)^negatives``.

    Parameters
    ----------
    share : tensor of float64, shape (n,)
    positions, negatives, n_items : int

    Returns
    -------
    tensor of float64, shape (n,), in (0, 1]
    """
    missed_uniform = negatives * math.log1p(-1.0 / n_items) if n_items > 1 else -math.inf
    missed = positions * torch.log1p(-share.clamp(max=1.0 - 1e-12)) + missed_uniform
    return -torch.expm1(missed)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    wanted: torch.Tensor,
    positive: torch.Tensor,
    candidates: torch.Tensor,
    vectors: torch.Tensor,
    usable: torch.Tensor,
    log_q: torch.Tensor | None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of each target against the shared candidates.

    Per position, the target's own score ``positive`` competes with every other candidate's
    score minus its ``log_q`` (the log of its probability of being drawn): the sum of the
    corrected exponentials is the Horvitz-Thompson estimate of the partition sum over all
    items but the target, unbiased over the draws. A candidate that is the position's target
    (an accidental hit) or that is not ``usable`` is left out.

    Parameters
    ----------
    hidden : tensor, shape (positions, dim)
    wanted : tensor of int64, shape (positions,)
        Each position's target row.
    positive : tensor, shape (positions,)
        Each position's score of its target.
    candidates : tensor of int64, shape (n_candidates,)
        Distinct item rows.
    vectors : tensor, shape (n_candidates, dim)
    usable : tensor of bool, shape (n_candidates,)
    log_q : tensor, shape (n_candidates,), or None (no correction)
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    tensor: the loss, or shape (positions,) with ``reduction="none"``
    """
    logits = (hidden @ vectors.T).float()
    if log_q is not None:
        logits = logits - log_q
    excluded = ~usable | (candidates == wanted.unsqueeze(1))
    logits = torch.cat([positive.float().unsqueeze(1), logits.masked_fill(excluded, -math.inf)], 1)
    return F.cross_entropy(logits, torch.zeros_like(wanted), reduction=reduction)


def _attention_mask(present: torch.Tensor) -> torch.Tensor:
    """(batch, 1, length, length): query t may attend to key s <= t when s is an item, and
    always to itself (so a padding query has one key and the softmax stays finite)."""
    length = present.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=present.device).tril()
    itself = torch.eye(length, dtype=torch.bool, device=present.device)
    return ((causal & present.unsqueeze(1)) | itself).unsqueeze(1)


def init_weights(net: SequenceNet, generator: torch.Generator) -> None:
    """Seeded initialisation: small normal embeddings, Xavier-uniform linear layers."""
    with torch.no_grad():
        net.item_embedding.normal_(0.0, net.init_std, generator=generator)
        net.item_embedding[0] = 0.0
        net.position_embedding.weight.normal_(0.0, net.init_std, generator=generator)
        for module in net.modules():
            if isinstance(module, nn.Linear):
                bound = math.sqrt(6.0 / (module.in_features + module.out_features))
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.zero_()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here")
    return device


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with torch's global generators seeded, restoring them after (dropout has no
    generator argument; this keeps steps reproducible without touching the caller's RNG)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
