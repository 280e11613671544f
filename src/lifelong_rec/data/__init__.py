"""Loaders, cleaning with a report, and the synthetic drifting stream."""

from lifelong_rec.data.cleaning import (
    Cleaned,
    CleaningConfig,
    clean,
    collapse_repeats,
    parse_timestamps,
)
from lifelong_rec.data.dataset import Dataset
from lifelong_rec.data.errors import InputError
from lifelong_rec.data.loaders import FORMATS, detect_format, load, read_raw
from lifelong_rec.data.report import REASONS, CleaningReport, Rejected
from lifelong_rec.data.stats import StreamStats, describe
from lifelong_rec.data.synthetic import synthetic_stream
from lifelong_rec.data.tables import RawTable, parse_mapping

__all__ = [
    "FORMATS",
    "REASONS",
    "Cleaned",
    "CleaningConfig",
    "CleaningReport",
    "Dataset",
    "InputError",
    "RawTable",
    "Rejected",
    "StreamStats",
    "clean",
    "collapse_repeats",
    "describe",
    "detect_format",
    "load",
    "parse_mapping",
    "parse_timestamps",
    "read_raw",
    "synthetic_stream",
]
