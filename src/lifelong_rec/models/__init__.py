"""Recommenders that learn from every event: popularity, item-kNN, matrix factorisation."""

from lifelong_rec.models.base import (
    Contribution,
    Explanation,
    Recommendations,
    Recommender,
    parse_model,
    registered_models,
    split_specs,
)
from lifelong_rec.models.bpr import BPR
from lifelong_rec.models.itemknn import ItemKNN
from lifelong_rec.models.mf import MatrixFactorization
from lifelong_rec.models.popularity import Popularity
from lifelong_rec.models.sparse import GrowingSparse

__all__ = [
    "BPR",
    "Contribution",
    "Explanation",
    "GrowingSparse",
    "ItemKNN",
    "MatrixFactorization",
    "Popularity",
    "Recommendations",
    "Recommender",
    "parse_model",
    "registered_models",
    "split_specs",
]
