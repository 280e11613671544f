"""Models from text: ``mf(factors=32, recency_half_life_seconds=60)``, for the command line
and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from lifelong_rec.events import Catalog
from lifelong_rec.models.base import OPTIONAL_MODELS, Recommender, registered_models
from lifelong_rec.models.text import ItemTexts
from lifelong_rec.specs import parse_spec


def parse_model(spec: str) -> tuple[str, Callable[[], Recommender]]:
    """A model factory from ``name`` or ``name(param=value, ...)``, e.g.
    ``mf(factors=32, recency_half_life_seconds=60)``; returns (the spec as label, factory).

    Names are the models' short names (:func:`model_names`); a named variant is a model of
    its own, e.g. ``session-mf``: matrix factorisation with the session-aware fold-in,
    ``mf(recency_half_life_seconds=60)``, whose parameters can be changed the same way.

    Raises
    ------
    ValueError
        Naming the model or parameter, if either is unknown or a value is not a literal.
    """
    spec = spec.strip()
    name = spec.partition("(")[0].strip()
    by_name = {cls.name: cls for cls in registered_models().values() if cls.name}
    if name not in by_name and name in OPTIONAL_MODELS:
        _, package, extra = OPTIONAL_MODELS[name]
        raise ValueError(
            f"model {name!r} needs {package}: pip install 'lifelong-rec[{extra}]' "
            "(install torch==2.13.0 first for the CPU build)"
        )
    model_class, params = parse_spec(spec, by_name, "model")
    model_class(**params)  # check the values now, not in a worker process later
    return spec, partial(model_class, **params)


def with_catalog(factory: Callable[[], Recommender], catalog: Catalog) -> Callable[[], Recommender]:
    """A factory whose models know the catalogue's items from the start, when they can use
    them (models with ``add_items`` and a text encoder); other models are left as they are.

    The text embeddings are computed once per encoder and shared by every model the factory
    makes (a strategy that retrains builds many).
    """
    encoded: dict[str, ItemTexts] = {}

    def make() -> Recommender:
        model = factory()
        encoder = getattr(model, "text_encoder", None)
        if encoder is not None and hasattr(model, "add_items") and len(catalog):
            if encoder not in encoded:
                encoded[encoder] = ItemTexts.encode(catalog, encoder)
            model.add_items(encoded[encoder])
        return model

    return make


def split_specs(text: str) -> list[str]:
    """Split ``a,b(x=1,y=2),c`` at the commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]
