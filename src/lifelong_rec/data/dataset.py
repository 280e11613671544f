"""A loaded data set: clean events, the item catalog, and what cleaning did."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong_rec.data.report import CleaningReport, Rejected
from lifelong_rec.events import Catalog, EventBatch


@dataclass(frozen=True, eq=False)
class Dataset:
    """What :func:`lifelong_rec.data.load` and :func:`synthetic_stream` return.

    Attributes
    ----------
    events : EventBatch
        The accepted events, in time order.
    catalog : Catalog
        Item titles, text and categories (empty when the source has none).
    report : CleaningReport
        Rows read, accepted, and rejected per reason.
    rejected : Rejected
        Every rejected row with its source line, reason and original fields.
    name : str
    """

    events: EventBatch
    catalog: Catalog
    report: CleaningReport
    rejected: Rejected
    name: str = ""

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, events={len(self.events)}, items in catalog="
            f"{len(self.catalog)}, rejected={len(self.rejected)})"
        )
