"""Evaluation: ranking metrics, hold-out checks, and protocol P1 (prequential)."""

from lifelong_rec.evaluate.holdout import random_precision, temporal_hit_rate
from lifelong_rec.evaluate.leave_one_out import (
    LeaveOneOutSplit,
    P2Report,
    P2Result,
    leave_one_out,
    leave_one_out_split,
)
from lifelong_rec.evaluate.metrics import coverage, hits, ndcg, novelty, recall, reciprocal_rank
from lifelong_rec.evaluate.prequential import P1Report, StrategyResult, Stream, prepare, prequential
from lifelong_rec.evaluate.report import markdown_table, plot, write_report

__all__ = [
    "LeaveOneOutSplit",
    "P1Report",
    "P2Report",
    "P2Result",
    "StrategyResult",
    "Stream",
    "coverage",
    "hits",
    "leave_one_out",
    "leave_one_out_split",
    "markdown_table",
    "ndcg",
    "novelty",
    "plot",
    "prepare",
    "prequential",
    "random_precision",
    "recall",
    "reciprocal_rank",
    "temporal_hit_rate",
    "write_report",
]
