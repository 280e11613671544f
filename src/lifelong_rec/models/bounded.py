"""Bounded memory for models that learn forever: id admission and expiry.

Most ids in a real stream are seen once (a visitor who never comes back, an item nobody
wants): a factor row for each of them costs memory and buys nothing. Two levers, after
Monolith (Liu et al., 2022), keep a model's size in proportion to the ids that matter:

- **Admission.** An id gets its own parameters once it has been seen ``admit_after`` times.
  Until then its events are not learned (the event log keeps them) and it is served as a new
  id is, with the fallback. Sightings are counted in a count-min sketch (:class:`Sightings`)
  of fixed size, so counting costs the same memory however many ids pass once: 4 rows of
  2^24 one-byte counters, 64 MiB. A sketch only over-counts: an id seen fewer times is
  admitted early when every one of its 4 counters is shared with other ids, which for
  ``n`` distinct ids happens with probability about ``(1 - exp(-n / 2^24)) ** 4``
  (5 % at 11 million ids).
- **Expiry.** Ids idle (no event) for longer than ``expire_after_days`` of stream time are
  dropped with everything the model holds for them: their rows, histories and counts.
  The dense indexes are compacted (:func:`compact`), so the freed memory is really freed.
  An expired id that comes back is a new id again; its sightings are still in the sketch,
  so it is admitted at once.

A model opts in through two constructor parameters (``admit_after``, ``expire_after_days``)
and a hook that compacts its own arrays (``_compact_model``); see
:class:`~lifelong_rec.models.mf.MatrixFactorization`. A model that bounds its memory keeps
its own index: an ensemble's candidates share one, which a candidate must not compact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lifelong_rec.events import EventBatch, IdIndex

if TYPE_CHECKING:
    from lifelong_rec.models.base import Recommender

SKETCH_DEPTH = 4
SKETCH_WIDTH_BITS = 24
_MULTIPLIERS = np.array(  # odd 64-bit constants: one multiplicative hash per sketch row
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93],
    dtype=np.uint64,
)


class Sightings:
    """How often each id was seen, estimated by a count-min sketch with conservative update.

    Parameters
    ----------
    width_bits : int
        Each of the :data:`SKETCH_DEPTH` rows holds ``2 ** width_bits`` counters (one byte
        each, saturating at 255).

    Examples
    --------
    >>> sightings = Sightings(width_bits=10)
    >>> sightings.add(np.array(["a", "b", "a"]), salt=0).tolist()
    [2, 1, 2]
    >>> sightings.add(np.array(["b"]), salt=0).tolist()
    [2]
    """

    def __init__(self, width_bits: int = SKETCH_WIDTH_BITS) -> None:
        if not 1 <= width_bits <= 32:
            raise ValueError(f"width_bits must be in [1, 32], got {width_bits!r}")
        self.width_bits = width_bits
        self.counts_ = np.zeros((SKETCH_DEPTH, 2**width_bits), dtype=np.uint8)

    def add(self, ids: np.ndarray, salt: int) -> np.ndarray:
        """Count one sighting per entry of ``ids`` (``salt`` keeps kinds of ids apart, e.g.
        users 0 and items 1); returns each entry's estimated count after the batch."""
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        unique, inverse, times = np.unique(ids, return_inverse=True, return_counts=True)
        cells = self._cells(unique, salt)  # (depth, n_unique)
        rows = np.arange(SKETCH_DEPTH)[:, None]
        # conservative update: raise each counter only to the id's new estimate
        estimate = self.counts_[rows, cells].min(axis=0).astype(np.int64) + times
        np.maximum.at(self.counts_, (rows, cells), np.minimum(estimate, 255).astype(np.uint8))
        return self.counts_[rows, cells].min(axis=0).astype(np.int64)[inverse]

    def _cells(self, ids: np.ndarray, salt: int) -> np.ndarray:
        hashed = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=f"lifelong{salt:08d}")
        shift = np.uint64(64 - self.width_bits)
        return ((hashed[None, :] * _MULTIPLIERS[:, None]) >> shift).astype(np.int64)

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.counts_ = state["counts"].astype(np.uint8)
        self.width_bits = int(np.log2(self.counts_.shape[1]))


def bounds_memory(model: object) -> bool:
    """Whether ``model`` admits ids only after some sightings or expires idle ones."""
    return (
        getattr(model, "admit_after", 1) > 1
        or getattr(model, "expire_after_days", None) is not None
    )


def admitted(
    model: Recommender, sightings: Sightings, events: EventBatch, after: int
) -> EventBatch:
    """The events whose user and item both have (or now earn) their own parameters in
    ``model``: known to it, or seen at least ``after`` times counting this batch."""
    users = model.users_.lookup(events.user) >= 0
    items = model.items_.lookup(events.item) >= 0
    for known, ids, salt in ((users, events.user, 0), (items, events.item, 1)):
        unknown = np.flatnonzero(~known)
        known[unknown] = sightings.add(ids[unknown], salt) >= after
    keep = users & items
    return events if keep.all() else events.take(np.flatnonzero(keep))


def compact(model: Recommender, keep_users: np.ndarray, keep_items: np.ndarray) -> None:
    """Drop the users and items not kept from ``model``, renumbering the rest densely in
    their order: the base index and histories here, the model's own arrays through its
    ``_compact_model(user_rows, item_rows)`` hook (the kept old indexes, ascending)."""
    user_rows, item_rows = np.flatnonzero(keep_users), np.flatnonzero(keep_items)
    model.users_ = IdIndex(model.users_.ids(user_rows))
    model.items_ = IdIndex(model.items_.ids(item_rows))
    model.history_ = model.history_.subset(user_rows, item_rows)
    model.last_seen_ = model.last_seen_.subset(user_rows, item_rows)
    model.history_size_ = np.diff(model.history_.tocsr().indptr).astype(np.int64)
    model.popularity_.counts = model.popularity_.counts[item_rows]
    model._compact_model(user_rows, item_rows)


def reports_memory(model: object) -> bool:
    """Whether the service should export ``model``'s memory (:func:`memory_report`): it
    bounds its memory (:func:`bounds_memory`), or it serves compressed factor tables
    (``serve_precision`` other than ``"fp32"``, see :mod:`.quantise`)."""
    return bounds_memory(model) or getattr(model, "serve_precision", "fp32") != "fp32"


def memory_report(model: Recommender) -> dict[str, int]:
    """What ``model`` holds: every array (``model_bytes``, :func:`footprint`), the tables its
    scoring reads (``served_bytes``, for a factor model: compressed or float32), and what
    admission left out and expiry freed (``memory_``, where it bounds its memory)."""
    report = {"model_bytes": footprint(model)}
    served_bytes = getattr(model, "served_bytes", None)
    if served_bytes is not None:
        report["served_bytes"] = int(served_bytes())
    counts: dict[str, int] = getattr(model, "memory_", {})
    return report | counts


def footprint(model: Recommender) -> int:
    """Bytes held by ``model``'s arrays: its indexes, histories and counts, and its own
    state (``_own_bytes``), counted by the rows in use (spare room that a table grows into is
    not counted)."""
    held = model.users_.nbytes + model.items_.nbytes
    held += model.history_.nbytes + model.last_seen_.nbytes
    held += model.history_size_.nbytes + model.popularity_.counts.nbytes
    return int(held + model._own_bytes())
