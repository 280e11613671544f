"""The columnar event batch: what every loader produces and every model learns from."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from lifelong_rec.events.ids import as_ids
from lifelong_rec.events.kinds import EventWeights, Kind, kind_codes, kind_names


@dataclass(frozen=True, eq=False, init=False)
class EventBatch:
    """A batch of events as parallel numpy columns, one row per event.

    Batches are immutable: the arrays are made read-only on construction, so a learner cannot
    change its input by accident. Use :meth:`from_columns` to build one from plain values.

    Attributes
    ----------
    user, item : array of str, shape (n,)
        External ids.
    timestamp : array of float64, shape (n,)
        Unix seconds (UTC).
    kind : array of uint8, shape (n,)
        :class:`Kind` codes.
    value : array of float64, shape (n,)
        The event's value (rating, watch seconds, reward, price); NaN where it has none.
    weight : array of float32, shape (n,)
        Implicit-feedback weight (see :class:`EventWeights`).
    context : mapping of str to array, shape (n,) each
        Optional context features, for example a position or user features: float64 for
        numbers (NaN where missing), str for text ("" where missing).
    policy, model_version : array of str, shape (n,)
        For logged decisions: which policy and model version served the item; "" otherwise.
    propensity : array of float64, shape (n,)
        For logged decisions: the probability that the policy showed the item; NaN otherwise.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    context: Mapping[str, np.ndarray]
    policy: np.ndarray
    model_version: np.ndarray
    propensity: np.ndarray

    def __init__(
        self,
        user: np.ndarray,
        item: np.ndarray,
        timestamp: np.ndarray,
        kind: np.ndarray,
        value: np.ndarray,
        weight: np.ndarray,
        context: Mapping[str, np.ndarray] | None = None,
        policy: np.ndarray | None = None,
        model_version: np.ndarray | None = None,
        propensity: np.ndarray | None = None,
    ) -> None:
        # Written out (not the dataclass's) so the optional columns, None here, are arrays
        # on the batch: "" for policy and model_version, NaN for propensity.
        n = len(user)
        fix = object.__setattr__  # frozen: normalise the fields once, here
        fix(self, "user", _column(user, str, n, "user"))
        fix(self, "item", _column(item, str, n, "item"))
        fix(self, "timestamp", _column(timestamp, np.float64, n, "timestamp"))
        fix(self, "kind", _column(kind, np.uint8, n, "kind"))
        fix(self, "value", _column(value, np.float64, n, "value"))
        fix(self, "weight", _column(weight, np.float32, n, "weight"))
        fix(self, "policy", _column(_or(policy, "", n), str, n, "policy"))
        fix(self, "model_version", _column(_or(model_version, "", n), str, n, "model_version"))
        fix(self, "propensity", _column(_or(propensity, np.nan, n), np.float64, n, "propensity"))
        features = {}
        for name, values in (context if context is not None else {}).items():
            values = np.asarray(values)
            dtype = np.float64 if values.dtype.kind in "biuf" else str  # numbers or text
            features[str(name)] = _column(values, dtype, n, f"context[{name!r}]")
        fix(self, "context", MappingProxyType(features))
        if n and int(self.kind.max()) >= len(Kind):
            raise ValueError(f"kind: code {int(self.kind.max())} is not a known event kind")

    # ------------------------------------------------------------------ building

    @classmethod
    def from_columns(
        cls,
        user: Iterable[object],
        item: Iterable[object],
        timestamp: Iterable[float],
        kind: str | Iterable[str] = "view",
        value: Iterable[float] | None = None,
        *,
        weights: EventWeights | None = None,
        context: Mapping[str, Iterable[object]] | None = None,
        policy: Iterable[str] | None = None,
        model_version: Iterable[str] | None = None,
        propensity: Iterable[float] | None = None,
    ) -> EventBatch:
        """Build a batch from plain values, computing weights from kinds and values.

        Raises
        ------
        ValueError
            Naming the field, if a kind is unknown or the columns differ in length.

        Examples
        --------
        >>> batch = EventBatch.from_columns([1, 2], ["a", "b"], [1.7e9, 1.7e9 + 1], "click")
        >>> len(batch), batch.user.tolist(), batch.weight.tolist()
        (2, ['1', '2'], [2.0, 2.0])
        """
        users = as_ids(user, "user")
        n = len(users)
        if isinstance(kind, str):
            kinds = np.full(n, kind)
        else:
            kinds = np.asarray(list(kind), dtype=str)
        codes = kind_codes(np.char.lower(kinds)) if len(kinds) else np.zeros(0, np.int16)
        if (codes < 0).any():
            bad = str(kinds[codes < 0][0])
            raise ValueError(f"kind: {bad!r} is not one of {', '.join(k.label for k in Kind)}")
        values = np.full(n, np.nan) if value is None else np.asarray(list(value), np.float64)
        weights = weights or EventWeights()
        if len(codes) != n or len(values) != n:
            raise ValueError(f"kind and value must have one entry per event ({n})")
        return cls(
            user=users,
            item=as_ids(item, "item"),
            timestamp=np.asarray(list(timestamp), dtype=np.float64),
            kind=codes.astype(np.uint8),
            value=values,
            weight=weights.weights(codes, values),
            context={k: np.asarray(list(v)) for k, v in (context or {}).items()},
            policy=None if policy is None else np.asarray(list(policy), dtype=str),
            model_version=None if model_version is None else np.asarray(list(model_version), str),
            propensity=None if propensity is None else np.asarray(list(propensity), np.float64),
        )

    @classmethod
    def empty(cls) -> EventBatch:
        return cls.from_columns([], [], [])

    @classmethod
    def concat(cls, batches: Iterable[EventBatch]) -> EventBatch:
        """One batch holding the rows of ``batches`` in order.

        Context features missing from some batches are filled with NaN (numbers) or "" (text).
        """
        batches = list(batches)
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        names = sorted({name for batch in batches for name in batch.context})
        context = {}
        for name in names:
            parts = [b.context.get(name) for b in batches]
            present = [p for p in parts if p is not None]
            numeric = all(p.dtype.kind in "biuf" for p in present)
            filler = np.nan if numeric else ""
            context[name] = np.concatenate(
                [
                    p.astype(np.float64 if numeric else str)
                    if p is not None
                    else np.full(len(b), filler, dtype=np.float64 if numeric else str)
                    for p, b in zip(parts, batches, strict=True)
                ]
            )
        return cls(
            **{name: np.concatenate([getattr(b, name) for b in batches]) for name in _COLUMNS},
            context=context,
        )

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        extra = f", context={list(self.context)}" if self.context else ""
        return f"EventBatch(n={len(self)}{extra})"

    @property
    def kind_names(self) -> np.ndarray:
        """Kind names, shape (n,)."""
        return kind_names(self.kind)

    def to_records(self) -> list[dict[str, object]]:
        """The rows as JSON-ready dicts with the keys the service's ``POST /events`` reads:
        user, item, kind (by name), timestamp, and value where it is not NaN."""
        columns = zip(self.user.tolist(), self.item.tolist(), self.kind_names.tolist(),
                      self.timestamp.tolist(), self.value.tolist(), strict=True)  # fmt: skip
        return [
            {"user": user, "item": item, "kind": kind, "timestamp": timestamp}
            | ({} if math.isnan(value) else {"value": value})
            for user, item, kind, timestamp, value in columns
        ]

    @property
    def has_decisions(self) -> bool:
        """True if any row is a logged decision (carries a propensity)."""
        return bool(np.isfinite(self.propensity).any())

    def take(self, rows: np.ndarray | slice) -> EventBatch:
        """The rows selected by an index array, boolean mask or slice, as a new batch."""
        return EventBatch(
            **{name: getattr(self, name)[rows] for name in _COLUMNS},
            context={name: values[rows] for name, values in self.context.items()},
        )

    def sorted_by_time(self) -> EventBatch:
        """Rows in timestamp order; ties keep their order (stable sort)."""
        return self.take(np.argsort(self.timestamp, kind="stable"))

    def equals(self, other: EventBatch) -> bool:
        """Whether two batches hold exactly the same rows (NaN equal to NaN)."""
        if len(self) != len(other) or set(self.context) != set(other.context):
            return False
        pairs = [(getattr(self, n), getattr(other, n)) for n in _COLUMNS]
        pairs += [(self.context[n], other.context[n]) for n in self.context]
        return all(_same(a, b) for a, b in pairs)


_COLUMNS = (
    "user",
    "item",
    "timestamp",
    "kind",
    "value",
    "weight",
    "policy",
    "model_version",
    "propensity",
)


def _or(values: np.ndarray | None, filler: object, n: int) -> np.ndarray:
    return np.full(n, filler) if values is None else values


def _column(values: object, dtype: type | np.dtype, n: int, name: str) -> np.ndarray:
    array = np.array(values, dtype=dtype, copy=True)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"{name}: expected shape ({n},), got {array.shape}")
    array.flags.writeable = False
    return array


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
