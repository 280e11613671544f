"""Recommenders that learn from every event: popularity, item-kNN, matrix factorisation."""

from lifelong_rec.models.base import (
    Contribution,
    Explanation,
    Recommendations,
    Recommender,
    registered_models,
)
from lifelong_rec.models.bpr import BPR
from lifelong_rec.models.itemknn import ItemKNN
from lifelong_rec.models.mf import MatrixFactorization
from lifelong_rec.models.popularity import Popularity
from lifelong_rec.models.sparse import GrowingSparse
from lifelong_rec.models.specs import parse_model, split_specs

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
