"""Explanations: why a model recommends an item, as typed reasons with sentences for people.

A model splits a score over the reasons that drive it (``Attribution``, per model, vectorised
over users and items); this module turns the split into :class:`Explanation` s: the top
reasons by absolute weight, what the listed reasons leave over (``rest``), and sentences that
name items by their catalogue titles (:class:`Wording`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg.lapack import dposv as _posv

from lifelong_rec.events import Catalog, IdIndex
from lifelong_rec.models.kernels import top_positive

#: What a reason can be.
#: - history: an item the user interacted with adds ``weight`` to the score (MF, transformer)
#: - similar_item: the item is similar to one the user interacted with (item-kNN, BPR)
#: - text: the item's text resembles that of one the user interacted with (a new item that
#:   the transformer knows by its text alone)
#: - popularity: the item is popular (recently, when the counts decay)
#: - exploration: the policy showed the item to learn about it, not because it ranks high
#: - business_rule: a rule outside the model placed the item (a boost, a pin)
REASON_KINDS = ("history", "similar_item", "text", "popularity", "exploration", "business_rule")


@dataclass(frozen=True)
class Reason:
    """One reason for a recommendation.

    Attributes
    ----------
    kind : str
        One of :data:`REASON_KINDS`.
    weight : float
        The reason's share of the score, in the score's units: the weights of an explanation's
        reasons plus its ``rest`` add up to its score. 0 for reasons outside the model's score
        (exploration, business rules).
    text : str
        A short sentence for a person, e.g. "Because you watched Star Wars (1977)".
    item : str or None
        The history item the reason rests on (history, similar_item, text); None otherwise.
    """

    kind: str
    weight: float
    text: str
    item: str | None = None


@dataclass(frozen=True)
class Explanation:
    """Why a model gives ``item`` its score for ``user``.

    Attributes
    ----------
    user, item : str
    score : float
        The model's score (NaN for an item the model does not know).
    model_version : str
        The version of the model that scored and explained (see ``Recommender.version``).
    method : str
        How the weights were computed, e.g. "exact split of the fold-in score" (MF),
        "exact sum over neighbours" (item-kNN), "integrated gradients, 3 Gauss-Legendre
        nodes" (the transformer), "decayed popularity" (popularity and the cold-start
        fallback).
    reasons : tuple of Reason
        The strongest reasons that raise the score, largest weight first (an exploration
        reason, when a policy adds one, comes first). What lowers the score is not a reason
        "because"; it stays in ``rest``.
    rest : float
        The part of the score the listed reasons do not carry: the reasons not listed and
        those that lower the score, plus what the method leaves unexplained (for MF, the gap
        between the stored user factors and the exact fold-in; for integrated gradients, the
        integration error). ``sum(r.weight for r in reasons) + rest == score``.
    fallback : bool
        True when the user got the cold-start fallback (decayed popularity).
    propensity : float or None
        When a policy chose the item: the probability it would show the item at its position.
    """

    user: str
    item: str
    score: float
    model_version: str
    method: str
    reasons: tuple[Reason, ...] = ()
    rest: float = 0.0
    fallback: bool = False
    propensity: float | None = None

    @property
    def top(self) -> Reason | None:
        """The strongest reason, or None when there is none."""
        return self.reasons[0] if self.reasons else None


@dataclass(frozen=True, eq=False)
class Attribution:
    """A model's split of the scores of ``n`` users' ``k`` items over their histories
    (internal: what ``Recommender._attribute`` returns).

    Attributes
    ----------
    method : str
    history : array of int64, shape (n, h)
        Each user's history items (model indexes), padded with -1.
    weights : array of float64, shape (n, h, k)
        What history item ``h`` adds to the score of item ``k``; 0 at padding.
    kinds : array of str, shape (n, k)
        The reason kind of each item's history reasons.
    popularity : array of float64, shape (n, k), or None
        A part of each score that is the item's popularity: a BPR item bias, the
        transformer's score for an empty history, the decayed count of the popularity model.
    trend : bool
        Whether ``popularity`` is a decayed (recent) count, worded as a trend.
    """

    method: str
    history: np.ndarray
    weights: np.ndarray
    kinds: np.ndarray
    popularity: np.ndarray | None = None
    trend: bool = False


def pad_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows as a dense table: (columns padded with -1, values padded with 0), both of
    shape (n_rows, longest row), entries in their CSR order."""
    lengths = np.diff(indptr)
    n_rows = len(lengths)
    longest = int(lengths.max(initial=0))
    if n_rows and longest and int(lengths.min()) == longest:  # one row (a request): no padding
        return (
            indices.astype(np.int64).reshape(n_rows, longest),
            data.astype(np.float64).reshape(n_rows, longest),
        )
    width = max(longest, 1)
    rows = np.repeat(np.arange(n_rows), lengths)
    slots = np.arange(len(indices)) - np.repeat(indptr[:-1], lengths)
    columns = np.full((n_rows, width), -1, dtype=np.int64)
    values = np.zeros((n_rows, width))
    columns[rows, slots] = indices
    values[rows, slots] = data
    return columns, values


def solve_positive(systems: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Solve ``systems[r] @ x = right[r]`` for symmetric positive definite systems (n, f, f)
    and right-hand sides (n, f, k): one Cholesky factorisation per system (LAPACK ``posv``)
    serves its k columns.

    A loop over the systems (users), not over their columns (items): at 64 factors numpy's
    batched LU solve costs about 1.5 times as much per system, as it copies every system
    into Fortran order and factorises without using the symmetry. A system that is not
    positive definite (an ill-conditioned one, by rounding) is solved by LU instead.
    """
    out = np.empty(right.shape)
    for row in range(len(out)):
        _, solved, info = _posv(systems[row], right[row])
        out[row] = solved if info == 0 else np.linalg.solve(systems[row], right[row])
    return out


def cosine(vectors: np.ndarray, row: int) -> np.ndarray:
    """Cosine similarity of every row of ``vectors`` (n, d) to row ``row``, shape (n,)."""
    norms = np.linalg.norm(vectors, axis=1)
    return (vectors @ vectors[row]) / np.maximum(norms * norms[row], 1e-12)


# ------------------------------------------------------------------------------ wording


_REMEMBERED = 1 << 16  # reason sentences a Wording keeps (about 10 MB)
_PERIODS = ((1.5, "today"), (10.0, "this week"), (45.0, "this month"), (400.0, "this year"))


@dataclass(frozen=True, eq=False)
class Wording:
    """How reasons are put into words.

    Parameters
    ----------
    catalog : Catalog, optional
        Titles (and categories, for trends) of the items; without one, or for an item it lacks
        or has no title for, items are named by their id.
    verb : str
        What the user did with a history item, in the past tense: "watched" for video,
        "read" for news, "bought" for a shop; "interacted with" by default.
    """

    catalog: Catalog | None = None
    verb: str = "interacted with"
    _index: IdIndex = field(init=False, repr=False)
    # (kind, item id) -> the sentence of a reason resting on that item: worded once
    _said: dict[tuple[str, str], str] = field(init=False, repr=False, default_factory=dict)
    # item id -> its first category (None: none): looked up once
    _category: dict[str, str | None] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.verb, str) or not self.verb.strip():
            raise ValueError(f"verb must be a non-empty string, got {self.verb!r}")
        items = self.catalog.item if self.catalog is not None else np.zeros(0, dtype=str)
        object.__setattr__(self, "_index", IdIndex(items))

    def titles(self, items: np.ndarray) -> np.ndarray:
        """The title of each item id, or "item <id>" without one (object array)."""
        items = np.asarray(items, dtype=str)
        if self.catalog is None or len(items) == 0 or len(self.catalog.title) == 0:
            return np.array([f"item {item}" for item in items.tolist()], dtype=object)
        rows = self._index.lookup(items)
        out = self.catalog.title[np.maximum(rows, 0)].astype(object)
        unnamed = np.flatnonzero((rows < 0) | (out == ""))
        out[unnamed] = [f"item {item}" for item in items[unnamed].tolist()]
        return out

    def category(self, item: str) -> str | None:
        """The item's first category, if the catalogue gives one."""
        return self.categories(np.array([item]))[0]

    def categories(self, items: np.ndarray) -> list[str | None]:
        """The first category of each item id, or None (one catalogue lookup for the items
        not asked about before; remembered as the sentences are)."""
        if self.catalog is None:
            return [None] * len(items)
        every = self.catalog.categories

        def look_up(missing: list[str]) -> list[str | None]:
            rows = self._index.lookup(np.array(missing, dtype=str)).tolist()
            return [every[row][0] if row >= 0 and every[row] else None for row in rows]

        return _remembered(self._category, np.asarray(items, dtype=str).tolist(), look_up)

    def reasons(self, kind: str, items: list[str]) -> list[str]:
        """The sentence of a reason of this kind resting on each of ``items`` (ids), named by
        its title: :meth:`reason` of :meth:`titles`. Sentences are remembered (up to
        :data:`_REMEMBERED`; then afresh), so a request words only the items it is the first
        to name."""

        def word(missing: list[tuple[str, str]]) -> list[str]:
            titles = self.titles(np.array([item for _, item in missing], dtype=str)).tolist()
            return [self.reason(kind, title) for title in titles]

        return _remembered(self._said, [(kind, item) for item in items], word)

    def reason(self, kind: str, title: str) -> str:
        """The sentence of a reason that rests on a history item with this title."""
        if kind == "history":
            return f"Because you {self.verb} {title}"
        if kind == "similar_item":
            return f"Similar to {title}, which you {self.verb}"
        if kind == "text":
            return f"New, and its description is like that of {title}, which you {self.verb}"
        raise ValueError(f"reason kind {kind!r} does not rest on a history item")

    def popularity(self, item: str, half_life_days: float | None) -> str:
        """ "Trending this week in Groceries", "Popular overall", ..."""
        return self.popularities(np.array([item]), [half_life_days])[0]

    def popularities(self, items: np.ndarray, half_life_days: list[float | None]) -> list[str]:
        """:meth:`popularity` for each of ``items`` (shape (n,)) with its own half-life
        (None: not decayed), with one catalogue lookup for all."""
        out = []
        for category, half_life in zip(self.categories(items), half_life_days, strict=True):
            where = f" in {category}" if category else ""
            if half_life is None:
                out.append(f"Popular{where}" if where else "Popular overall")
                continue
            period = next((name for days, name in _PERIODS if half_life <= days), "")
            out.append(f"Trending {period}{where}".replace("  ", " ").strip())
        return out

    def exploration(self, propensity: float) -> str:
        return (
            "Shown to explore new items: picked over higher-ranked ones, "
            f"with probability {propensity:.2g}"
        )


def _remembered(store: dict, keys: list, make: Callable[[list], list]) -> list:
    """The value of each key: from ``store``, the missing ones made at once by ``make`` (on
    the distinct missing keys) and kept there. A store that would grow past
    :data:`_REMEMBERED` starts afresh with this call's keys."""
    missing = list(dict.fromkeys(key for key in keys if key not in store))
    if missing:
        if len(store) + len(missing) > _REMEMBERED:
            store.clear()
            missing = list(dict.fromkeys(keys))
        store.update(zip(missing, make(missing), strict=True))
    return [store[key] for key in keys]


# ------------------------------------------------------------------------------ building


def top_reasons(
    attribution: Attribution, top: int, popularity: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` reasons of every (user, item) that raise its score, largest weight first,
    in one compiled pass over the weights (:func:`~lifelong_rec.models.kernels.top_positive`).

    ``popularity`` (n, k), when given, is one more candidate per item, ranked with the
    history reasons in the same pass (item -2), so the caller need not merge and sort again.
    Of equal weights the earlier history item ranks first, and a history item before the
    popularity part.

    Returns
    -------
    items : array of int64, shape (n, k, width)
        History item of each reason, -2 for the popularity part; -1 where there is none (a
        short or padded history, or no more candidates with a positive weight). ``width``
        is ``top``, or fewer when there are fewer candidates.
    weights : array of float64, shape (n, k, width)
        0 where ``items`` is -1.
    """
    history = attribution.history
    h = history.shape[1]
    k = attribution.weights.shape[2]
    extra = 0 if popularity is None else 1
    width = min(top, h + extra)
    if popularity is None:
        popularity = np.zeros((0, k))
    return top_positive(
        np.ascontiguousarray(history, dtype=np.int64),
        np.ascontiguousarray(attribution.weights, dtype=np.float64),
        np.ascontiguousarray(popularity, dtype=np.float64),
        width,
    )
