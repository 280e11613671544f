"""Recommenders that learn from every event: popularity, item-kNN, sequential rules, matrix
factorisation, and the sequential transformer (imported on first use: it needs PyTorch, the
``deep`` extra)."""

from lifelong_rec.models.auto import Auto, Ensemble
from lifelong_rec.models.base import (
    Recommendations,
    Recommender,
    model_names,
    registered_models,
)
from lifelong_rec.models.bpr import BPR
from lifelong_rec.models.explanation import REASON_KINDS, Explanation, Reason, Wording
from lifelong_rec.models.fresh import Fresh
from lifelong_rec.models.itemknn import ItemKNN
from lifelong_rec.models.mf import MatrixFactorization
from lifelong_rec.models.neighbours import SessionKNN
from lifelong_rec.models.popularity import Popularity
from lifelong_rec.models.rules import SequentialRules
from lifelong_rec.models.sparse import GrowingSparse
from lifelong_rec.models.specs import parse_model, split_specs, with_catalog
from lifelong_rec.models.text import (
    HashingTextEncoder,
    ItemTexts,
    SentenceTransformerEncoder,
    TextEncoder,
    item_texts,
    text_encoder,
)


def __getattr__(name: str) -> object:
    if name == "SequentialTransformer":  # imports torch: only when asked for
        from lifelong_rec.models.sequential import SequentialTransformer

        return SequentialTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BPR",
    "REASON_KINDS",
    "Auto",
    "Ensemble",
    "Explanation",
    "Fresh",
    "GrowingSparse",
    "HashingTextEncoder",
    "ItemKNN",
    "ItemTexts",
    "MatrixFactorization",
    "Popularity",
    "Reason",
    "Recommendations",
    "Recommender",
    "SentenceTransformerEncoder",
    "SequentialRules",
    "SequentialTransformer",
    "SessionKNN",
    "TextEncoder",
    "Wording",
    "item_texts",
    "model_names",
    "parse_model",
    "registered_models",
    "split_specs",
    "text_encoder",
    "with_catalog",
]
