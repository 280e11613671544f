"""Evaluation: hold-out checks of single models (the streaming protocols build on them)."""

from lifelong_rec.evaluate.holdout import random_precision, temporal_hit_rate

__all__ = ["random_precision", "temporal_hit_rate"]
