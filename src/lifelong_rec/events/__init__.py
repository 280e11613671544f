"""The event schema: columnar batches, event kinds and their weights, growing id indexes."""

from lifelong_rec.events.batch import EventBatch
from lifelong_rec.events.catalog import Catalog
from lifelong_rec.events.ids import IdIndex, as_ids
from lifelong_rec.events.kinds import KIND_NAMES, EventWeights, Kind, kind_codes, kind_names

__all__ = [
    "KIND_NAMES",
    "Catalog",
    "EventBatch",
    "EventWeights",
    "IdIndex",
    "Kind",
    "as_ids",
    "kind_codes",
    "kind_names",
]
