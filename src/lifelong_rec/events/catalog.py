"""The item catalog: what is known about items besides the events (titles, text, categories)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from lifelong_rec.events.ids import as_ids


@dataclass(frozen=True, eq=False)
class Catalog:
    """Item metadata as parallel columns, one row per item.

    Attributes
    ----------
    item : array of str, shape (n,)
        External item ids, unique.
    title : array of str, shape (n,)
        A short name for people ("" when unknown).
    text : array of str, shape (n,)
        Longer text for text models (description, genres spelled out; "" when unknown).
    categories : tuple of tuple of str, length n
        Categories or genres of each item.
    attributes : tuple of dict, length n
        Other item features (numbers or strings), JSON-serialisable.
    """

    item: np.ndarray
    title: np.ndarray
    text: np.ndarray
    categories: tuple[tuple[str, ...], ...] = field(default=())
    attributes: tuple[Mapping[str, object], ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.item)
        fix = object.__setattr__
        fix(self, "item", _frozen(as_ids(self.item, "item")))
        fix(self, "title", _frozen(np.asarray(self.title, dtype=str)))
        fix(self, "text", _frozen(np.asarray(self.text, dtype=str)))
        fix(self, "categories", tuple(tuple(map(str, c)) for c in self.categories) or ((),) * n)
        fix(self, "attributes", tuple(dict(a) for a in self.attributes) or ({},) * n)
        for name in ("title", "text", "categories", "attributes"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Catalog.{name}: expected {n} entries, got {len(getattr(self, name))}"
                )
        if len(np.unique(self.item)) != n:
            raise ValueError("Catalog.item: item ids must be unique")

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]]) -> Catalog:
        """Build from dicts with the keys item, title, text, categories and attributes.

        Only ``item`` is required.
        """
        records = list(records)
        return cls(
            item=as_ids([r["item"] for r in records], "item"),
            title=np.array([str(r.get("title") or "") for r in records], dtype=str),
            text=np.array([str(r.get("text") or "") for r in records], dtype=str),
            # Untyped records (JSON): __post_init__ turns each category into a str.
            categories=tuple(
                tuple(cast("Iterable[str]", r.get("categories") or ())) for r in records
            ),
            attributes=tuple(
                dict(cast("Mapping[str, object]", r.get("attributes") or {})) for r in records
            ),
        )

    @classmethod
    def empty(cls) -> Catalog:
        return cls.from_records([])

    def __len__(self) -> int:
        return len(self.item)

    def __repr__(self) -> str:
        return f"Catalog(n={len(self)})"

    def records(self) -> list[dict[str, object]]:
        """One dict per item."""
        return [
            {"item": i, "title": t, "text": x, "categories": list(c), "attributes": dict(a)}
            for i, t, x, c, a in zip(
                self.item.tolist(),
                self.title.tolist(),
                self.text.tolist(),
                self.categories,
                self.attributes,
                strict=True,
            )
        ]

    def titles_of(self, items: Iterable[object]) -> np.ndarray:
        """Titles of ``items`` ("" for items not in the catalog), shape (n,)."""
        query = as_ids(items, "item")
        order = np.argsort(self.item)
        if len(order) == 0:
            return np.full(len(query), "", dtype=str)
        sorted_items = self.item[order]
        position = np.minimum(np.searchsorted(sorted_items, query), len(order) - 1)
        found = sorted_items[position] == query
        return np.where(found, self.title[order][position], "")


def _frozen(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array
