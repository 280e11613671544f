"""Off-policy estimators on logged bandit feedback: IPS, SNIPS, DM, DR, Switch-DR.

A :class:`BanditLog` holds what a behaviour policy did: at row i it showed action (item)
``a_i`` at position ``k_i`` with probability ``p_i`` and received reward ``r_i``. An estimator
takes the log and the evaluation policy's action distribution ``target`` and estimates the
evaluation policy's value, the mean reward per row it would have earned.

Positions
    The Open Bandit Dataset shows three items per impression, one per position, and logs one
    row per (impression, position). As the Open Bandit Pipeline does, the position is part of
    the context, not of the action: ``target[i, a, k]`` is the probability that the evaluation
    policy puts item ``a`` at position ``k`` for row i, each ``target[i, :, k]`` sums to one, the
    importance weight of row i is ``target[i, a_i, k_i] / p_i`` (the logged propensity is also
    position-specific), and the policy value is the mean reward over all rows. The ground truth
    of a policy is the mean click of its own log. A target of shape (n, n_actions) is the same
    distribution at every position.

Reward model (DM, DR, Switch-DR)
    :class:`SmoothedClickRates`: per (item, position) click rates, shrunk towards the item's
    rate times the position's relative click rate (which are in turn shrunk towards the log's
    rate), with ``prior_strength`` pseudo-impressions at each level. It is cross-fitted in two
    folds: a row's predictions come from the rates of the other fold, so a row's own click never
    predicts itself. It ignores user features; both OBD policies ignore them too, so the
    contexts are independent of the actions and the direct method only needs
    ``E_x[q(x, a, k)]``, which a context-free model estimates without that bias.

Bootstrap
    Rows are resampled with replacement (a matrix of row indexes, in chunks that bound the
    memory; the same resamples for every estimator with the same seed). DM, DR and Switch-DR
    refit the cross-fitted reward model on every resample (vectorised: its counts are products
    of the resamples' row multiplicities with sparse indicator matrices); holding it fixed, as
    the Open Bandit Pipeline's ``estimate_interval`` does, makes DM's interval far too narrow.
    The target is held fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from scipy import sparse

from lifelong_rec.events import Catalog, EventBatch

Reward = Literal["click", "real"]
_CHUNK_CELLS = 4_000_000  # row indexes per bootstrap chunk: 32 MB of int64


# ---------------------------------------------------------------------------------------- log


@dataclass(frozen=True, eq=False)
class BanditLog:
    """Logged bandit feedback, one row per logged decision.

    Attributes
    ----------
    actions : array of int, shape (n,)
        Index of the shown item in ``items``.
    positions : array of int, shape (n,)
        Position of the shown item, starting at 0 (OBD's position 1 is 0).
    rewards : array of float, shape (n,)
        The reward; for ``reward="click"`` 0 or 1.
    propensities : array of float, shape (n,)
        Probability that the behaviour policy showed ``actions[i]`` at ``positions[i]``, in (0, 1].
    contexts : array of float, shape (n, d)
        Context features (for OBD: one-hot user features and the user-item affinities).
    n_actions : int
    items : array of str, shape (n_actions,), optional
        Item ids of the actions; ``"0" .. "n_actions-1"`` when not given.
    reward : {"click", "real"}
    """

    actions: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    contexts: np.ndarray
    n_actions: int
    items: np.ndarray | None = None
    reward: Reward = "click"

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise the fields once, here
        rewards = _vector(self.rewards, np.float64, "rewards")
        n = len(rewards)
        fix(self, "rewards", rewards)
        fix(self, "actions", _vector(self.actions, np.int64, "actions", n))
        fix(self, "positions", _vector(self.positions, np.int64, "positions", n))
        fix(self, "propensities", _vector(self.propensities, np.float64, "propensities", n))
        contexts = np.array(self.contexts, dtype=np.float64)
        contexts = contexts[:, None] if contexts.ndim == 1 else contexts
        if contexts.ndim != 2 or len(contexts) != n:
            raise ValueError(f"contexts: expected shape ({n}, d), got {contexts.shape}")
        contexts.flags.writeable = False
        fix(self, "contexts", contexts)
        if not isinstance(self.n_actions, int | np.integer) or self.n_actions < 1:
            raise ValueError(f"n_actions: must be a positive integer, got {self.n_actions!r}")
        fix(self, "n_actions", int(self.n_actions))
        items = np.arange(self.n_actions).astype(str) if self.items is None else self.items
        fix(self, "items", _vector(items, str, "items", self.n_actions))
        if self.reward not in ("click", "real"):
            raise ValueError(f"reward: must be 'click' or 'real', got {self.reward!r}")
        _check_log(self)

    @classmethod
    def from_events(
        cls, events: EventBatch, items: Sequence[str] | np.ndarray | Catalog
    ) -> BanditLog:
        """The log of an :class:`EventBatch` as :func:`lifelong_rec.data.load` reads OBD.

        Parameters
        ----------
        events : EventBatch
            Reward in ``value``, propensity in ``propensity``, position (1-based) in
            ``context["position"]`` (position 0 for every row when absent); other numeric
            context columns become features, text ones (OBD's hashed user features) one-hot.
        items : sequence of str or Catalog
            The action set; ``actions`` index into it.

        Raises
        ------
        ValueError
            Naming the field: an item not in ``items``, a missing or bad propensity, position or
            reward.
        """
        ids = np.asarray(items.item if isinstance(items, Catalog) else items, dtype=str)
        order = np.argsort(ids, kind="stable")
        where = np.searchsorted(ids[order], events.item).clip(0, max(len(ids) - 1, 0))
        if len(events) and (len(ids) == 0 or (ids[order][where] != events.item).any()):
            unknown = events.item[ids[order][where] != events.item][0] if len(ids) else "?"
            raise ValueError(f"item: {str(unknown)!r} is not one of the {len(ids)} items")
        position = events.context.get("position")
        if position is None:
            positions = np.zeros(len(events), dtype=np.int64)
        else:
            if not np.isfinite(position).all() or (position < 1).any():
                raise ValueError("position: every row needs a position >= 1 (1 is the top)")
            positions = position.astype(np.int64) - 1
        features = [
            _one_hot(values) if values.dtype.kind in "UO" else values[:, None]
            for name, values in sorted(events.context.items())
            if name != "position"
        ]
        contexts = np.hstack(features) if features else np.zeros((len(events), 0))
        return cls(
            actions=order[where],
            positions=positions,
            rewards=events.value,
            propensities=events.propensity,
            contexts=contexts,
            n_actions=len(ids),
            items=ids,
        )

    def __len__(self) -> int:
        return len(self.rewards)

    def __repr__(self) -> str:
        return f"BanditLog(n={len(self)}, n_actions={self.n_actions}, reward={self.reward!r})"

    @property
    def n_positions(self) -> int:
        """One more than the highest logged position (at least 1)."""
        return int(self.positions.max()) + 1 if len(self) else 1

    def take(self, rows: np.ndarray | slice) -> BanditLog:
        """The rows selected by an index array, boolean mask or slice."""
        return BanditLog(
            actions=self.actions[rows],
            positions=self.positions[rows],
            rewards=self.rewards[rows],
            propensities=self.propensities[rows],
            contexts=self.contexts[rows],
            n_actions=self.n_actions,
            items=self.items,
            reward=self.reward,
        )


def _vector(values: object, dtype: type, name: str, n: int | None = None) -> np.ndarray:
    try:
        array: np.ndarray = np.array(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: cannot read as {np.dtype(dtype).name}: {error}") from None
    if array.ndim != 1 or (n is not None and len(array) != n):
        raise ValueError(
            f"{name}: expected shape ({n if n is not None else 'n'},), got {array.shape}"
        )
    array.flags.writeable = False
    return array


def _check_log(log: BanditLog) -> None:
    def bad(name: str, mask: np.ndarray, problem: str) -> None:
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            value = getattr(log, name)[row]
            raise ValueError(
                f"{name}: {int(mask.sum())} of {len(log)} rows {problem} "
                f"(first: row {row}, {value})"
            )

    p, r = log.propensities, log.rewards
    bad("propensities", np.isnan(p), "have no propensity (NaN); OPE needs the logging probability")
    bad("propensities", p <= 0, "are not > 0")
    bad("propensities", p > 1, "are above 1")
    bad("rewards", ~np.isfinite(r), "have no finite reward")
    if log.reward == "click":
        bad("rewards", r < 0, "are negative, but a click reward is 0 or 1")
        bad("rewards", (r != 0) & (r != 1), "are not 0 or 1, as a click reward must be")
    bad("actions", (log.actions < 0) | (log.actions >= log.n_actions), "are not in [0, n_actions)")
    bad("positions", log.positions < 0, "are negative")


def _one_hot(values: np.ndarray) -> np.ndarray:
    levels, codes = np.unique(values, return_inverse=True)
    return np.eye(len(levels))[codes]


# ----------------------------------------------------------------------------- reward model


@dataclass(frozen=True)
class SmoothedClickRates:
    """Cross-fitted per (item, position) reward model q(a, k) (see the module docstring).

    Parameters
    ----------
    prior_strength : float
        Pseudo-impressions of the prior at each smoothing level.
    n_folds : int
        Cross-fitting folds; a row is predicted by the rates of the other folds.
    seed : int
        For the random fold assignment.
    """

    prior_strength: float = 100.0
    n_folds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.prior_strength > 0:
            raise ValueError(f"prior_strength: must be > 0, got {self.prior_strength!r}")
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValueError(f"n_folds: must be an integer >= 2, got {self.n_folds!r}")

    def folds(self, n: int) -> np.ndarray:
        """The fold of each of ``n`` rows: a seeded split into near-equal parts, shape (n,)."""
        return np.random.default_rng(self.seed).permutation(n) % self.n_folds

    def smooth(self, shown: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        """Smoothed rates from counts per cell, shape (..., n_actions, n_positions) both."""
        s = self.prior_strength
        total = shown.sum(axis=(-2, -1), keepdims=True)
        overall = np.divide(
            clicks.sum(axis=(-2, -1), keepdims=True),
            total,
            out=np.zeros_like(total),
            where=total > 0,
        )
        item = (clicks.sum(-1, keepdims=True) + s * overall) / (shown.sum(-1, keepdims=True) + s)
        position = (clicks.sum(-2, keepdims=True) + s * overall) / (
            shown.sum(-2, keepdims=True) + s
        )
        lift = np.divide(position, overall, out=np.ones_like(position), where=overall > 0)
        return (clicks + s * item * lift) / (shown + s)

    def rates(self, log: BanditLog, n_positions: int | None = None) -> np.ndarray:
        """Smoothed rates fitted on all of ``log``, shape (n_actions, n_positions)."""
        shown = np.zeros((log.n_actions, n_positions or log.n_positions))
        clicks = np.zeros_like(shown)
        np.add.at(shown, (log.actions, log.positions), 1.0)
        np.add.at(clicks, (log.actions, log.positions), log.rewards)
        return self.smooth(shown, clicks)

    def predict(self, log: BanditLog, n_positions: int | None = None) -> np.ndarray:
        """Cross-fitted q(x_i, a, k_i) for every row and action, shape (n, n_actions)."""
        n_positions = n_positions or log.n_positions
        folds = self.folds(len(log))
        tables = np.stack(
            [self.rates(log.take(folds != f), n_positions) for f in range(self.n_folds)]
        )
        return tables[folds, :, log.positions]


# ------------------------------------------------------------------------------- estimators


@dataclass(frozen=True)
class _Estimator:
    """Shared by the estimators: the value is ``sum(numerator) / sum(denominator)``."""

    name: ClassVar[str] = ""

    def _terms(self, log: BanditLog, target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row numerator and denominator (None: the row count)."""
        raise NotImplementedError

    def estimate(self, log: BanditLog, target: np.ndarray) -> float:
        """The evaluation policy's estimated value (mean reward per row).

        Parameters
        ----------
        log : BanditLog
            The behaviour policy's log.
        target : array, shape (n, n_actions, n_positions) or (n, n_actions)
            The evaluation policy's action distribution, ``target[i, a, k]``.
        """
        numerator, denominator = self._terms(log, target)
        if denominator is None:
            return float(numerator.mean()) if len(numerator) else math.nan
        total = float(denominator.sum())
        return float(numerator.sum()) / total if total > 0 else math.nan

    def bootstrap(
        self, log: BanditLog, target: np.ndarray, n_boot: int = 1000, seed: int = 0
    ) -> np.ndarray:
        """Estimates on ``n_boot`` resamples of the rows, shape (n_boot,)."""
        numerator, denominator = self._terms(log, target)
        return bootstrap_ratio(numerator, denominator, n_boot=n_boot, seed=seed)

    def interval(
        self,
        log: BanditLog,
        target: np.ndarray,
        n_boot: int = 1000,
        seed: int = 0,
        level: float = 0.95,
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of the estimate at ``level``."""
        return percentile_interval(self.bootstrap(log, target, n_boot, seed), level)

    @property
    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class IPS(_Estimator):
    """Inverse propensity scoring: ``mean(r_i w_i)``, ``w_i = target[i, a_i, k_i] / p_i``."""

    name: ClassVar[str] = "ips"

    def _terms(self, log: BanditLog, target: np.ndarray) -> tuple[np.ndarray, None]:
        return log.rewards * importance_weights(log, target), None


@dataclass(frozen=True)
class SNIPS(_Estimator):
    """Self-normalised IPS: ``sum(r_i w_i) / sum(w_i)``."""

    name: ClassVar[str] = "snips"

    def _terms(self, log: BanditLog, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights = importance_weights(log, target)
        return log.rewards * weights, weights


@dataclass(frozen=True)
class _ModelBased(_Estimator):
    """Shared by DM, DR and Switch-DR: the reward model's value plus a switched correction."""

    @property
    def _tau(self) -> float:
        """Rows with weight <= tau get the importance-weighted correction."""
        raise NotImplementedError

    def _terms(self, log: BanditLog, target: np.ndarray) -> tuple[np.ndarray, None]:
        model: SmoothedClickRates = self.reward_model  # type: ignore[attr-defined]
        policy = target_at_positions(log, target)
        q = model.predict(log, policy_positions(target))
        rows = np.arange(len(log))
        weights = policy[rows, log.actions] / log.propensities
        residual = log.rewards - q[rows, log.actions]
        correction = np.where(weights <= self._tau, weights * residual, 0.0)
        return np.einsum("ia,ia->i", policy, q) + correction, None

    def bootstrap(
        self, log: BanditLog, target: np.ndarray, n_boot: int = 1000, seed: int = 0
    ) -> np.ndarray:
        """Estimates on ``n_boot`` resamples of the rows, the reward model refitted on each.

        Shape (n_boot,). The resamples are those of :func:`bootstrap_ratio` with the same seed.
        """
        model: SmoothedClickRates = self.reward_model  # type: ignore[attr-defined]
        return _model_bootstrap(log, target, model, self._tau, n_boot, seed)


@dataclass(frozen=True)
class DM(_ModelBased):
    """Direct method: ``mean_i sum_a target[i, a, k_i] q(x_i, a, k_i)``."""

    reward_model: SmoothedClickRates = field(default_factory=SmoothedClickRates)
    name: ClassVar[str] = "dm"

    @property
    def _tau(self) -> float:
        return -math.inf  # no row is corrected


@dataclass(frozen=True)
class DR(_ModelBased):
    """Doubly robust: DM plus ``mean(w_i (r_i - q(x_i, a_i, k_i)))``."""

    reward_model: SmoothedClickRates = field(default_factory=SmoothedClickRates)
    name: ClassVar[str] = "dr"

    @property
    def _tau(self) -> float:
        return math.inf


@dataclass(frozen=True)
class SwitchDR(_ModelBased):
    """Switch-DR (Wang et al., 2017): DR's correction only on rows with ``w_i <= tau``.

    Rows whose weight exceeds ``tau`` are left to the reward model. ``tau = inf`` is DR. The
    default of 10 is a round number, not tuned on any ground truth.
    """

    tau: float = 10.0
    reward_model: SmoothedClickRates = field(default_factory=SmoothedClickRates)
    name: ClassVar[str] = "switch-dr"

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau: must be > 0, got {self.tau!r}")

    @property
    def _tau(self) -> float:
        return self.tau

    @property
    def label(self) -> str:
        return f"switch-dr(tau={self.tau:g})"


def _model_bootstrap(
    log: BanditLog,
    target: np.ndarray,
    model: SmoothedClickRates,
    tau: float,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """The model-based estimate on resamples, each refitting the cross-fitted reward model.

    A resample is a multiplicity per row (a matrix m, one row per resample). Every sum the
    estimate needs is then a product with m: the impressions and clicks of each (fold, item,
    position) cell, the policy's mass per (fold, position) and the correction terms.
    """
    policy = target_at_positions(log, target)
    n, n_actions = policy.shape
    n_positions = policy_positions(target) or log.n_positions
    n_folds, n_cells = model.n_folds, n_actions * n_positions
    folds, rows = model.folds(n), np.arange(n)
    columns = folds * n_cells + log.actions * n_positions + log.positions
    weights = policy[rows, log.actions] / log.propensities
    switched = np.where(weights <= tau, weights, 0.0)

    def by_cell(values: np.ndarray) -> sparse.csc_array:  # (n, n_folds * n_cells)
        return sparse.csc_array((values, (rows, columns)), shape=(n, n_folds * n_cells))

    shown_by, clicks_by, corrected_by = by_cell(np.ones(n)), by_cell(log.rewards), by_cell(switched)
    groups = [
        (folds == f) & (log.positions == k) for f in range(n_folds) for k in range(n_positions)
    ]
    shape = (-1, n_folds, n_actions, n_positions)
    out = np.empty(n_boot)
    for start, resample in _resamples(n, n_boot, seed):
        size = len(resample)
        offsets = np.arange(size)[:, None] * n
        m = np.bincount((offsets + resample).ravel(), minlength=size * n).reshape(size, n)
        m = m.astype(np.float64)
        shown = (shown_by.T @ m.T).T.reshape(shape)
        clicks = (clicks_by.T @ m.T).T.reshape(shape)
        # each fold's model is fitted on the other folds' rows
        q = model.smooth(shown.sum(1, keepdims=True) - shown, clicks.sum(1, keepdims=True) - clicks)
        direct = np.zeros(size)
        for g, members in enumerate(groups):
            fold, position = divmod(g, n_positions)
            mass = m[:, members] @ policy[members]
            direct += np.einsum("ba,ba->b", mass, q[:, fold, :, position])
        corrected = (corrected_by.T @ m.T).T
        correction = m @ (switched * log.rewards) - np.einsum(
            "bj,bj->b", corrected, q.reshape(size, -1)
        )
        out[start : start + size] = (direct + correction) / n
    return out


ESTIMATORS: dict[str, type[_Estimator]] = {e.name: e for e in (IPS, SNIPS, DM, DR, SwitchDR)}


# ----------------------------------------------------------------------------------- target


def check_target(log: BanditLog, target: np.ndarray) -> np.ndarray:
    """``target`` as shape (n, n_actions, n_positions), checked; ValueError naming ``target``."""
    target = np.asarray(target, dtype=np.float64)
    if target.ndim == 2:
        target = target[:, :, None]
    n, n_actions = len(log), log.n_actions
    if target.ndim != 3 or target.shape[:2] != (n, n_actions):
        raise ValueError(
            f"target: expected shape ({n}, {n_actions}, n_positions) or ({n}, {n_actions}), "
            f"got {np.shape(target)}"
        )
    if target.shape[2] == 1:
        pass  # one distribution for every position
    elif len(log) and target.shape[2] <= int(log.positions.max()):
        raise ValueError(
            f"target: has {target.shape[2]} positions, the log has position {log.positions.max()}"
        )
    if not np.isfinite(target).all() or (target < 0).any():
        raise ValueError("target: probabilities must be finite and >= 0")
    sums = target.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        worst = np.unravel_index(np.argmax(np.abs(sums - 1.0)), sums.shape)
        raise ValueError(
            f"target: each row must sum to 1 over actions at every position; row {worst[0]} "
            f"sums to {sums[worst]:.6g}"
        )
    return target


def policy_positions(target: np.ndarray) -> int | None:
    """How many positions a target distinguishes (None: one for all)."""
    return target.shape[2] if np.ndim(target) == 3 and target.shape[2] > 1 else None


def target_at_positions(log: BanditLog, target: np.ndarray) -> np.ndarray:
    """``target[i, :, k_i]``: the distribution at each row's position, shape (n, n_actions)."""
    target = check_target(log, target)
    positions = log.positions if target.shape[2] > 1 else np.zeros(len(log), dtype=np.int64)
    return target[np.arange(len(log)), :, positions]


def importance_weights(log: BanditLog, target: np.ndarray) -> np.ndarray:
    """``target[i, a_i, k_i] / p_i``, shape (n,)."""
    policy = target_at_positions(log, target)
    return policy[np.arange(len(log)), log.actions] / log.propensities


# -------------------------------------------------------------------------------- bootstrap


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``sum(numerator[b]) / sum(denominator[b])`` (or the mean) on row resamples b.

    The resamples are a matrix of row indexes, drawn in chunks of at most
    ``4,000,000`` indexes. Shape (n_boot,).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    n = len(numerator)
    if n == 0:
        return np.full(n_boot, np.nan)
    out = np.empty(n_boot)
    for start, rows in _resamples(n, n_boot, seed):
        top = numerator[rows].sum(axis=1)
        bottom = np.full(len(rows), float(n)) if denominator is None else denominator[rows].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + len(rows)] = np.where(bottom > 0, top / bottom, np.nan)
    return out


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks of resampled row indexes: (first resample, array of shape (chunk, n))."""
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_boot, chunk):
        yield start, rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (NaN replicates ignored)."""
    if not 0 < level < 1:
        raise ValueError(f"level: must be in (0, 1), got {level}")
    if np.isnan(replicates).all():
        return math.nan, math.nan
    low, high = np.nanquantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
