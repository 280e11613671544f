"""Models from text: ``mf(factors=32, recency_half_life_seconds=60)``, for the command line
and the benchmarks."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from functools import partial

from lifelong_rec.events import Catalog
from lifelong_rec.models.base import OPTIONAL_MODELS, Recommender, registered_models
from lifelong_rec.models.text import ItemTexts


def parse_model(spec: str) -> tuple[str, Callable[[], Recommender]]:
    """A model factory from ``name`` or ``name(param=value, ...)``, e.g.
    ``mf(factors=32, recency_half_life_seconds=60)``; returns (the spec as label, factory).

    Raises
    ------
    ValueError
        Naming the model or parameter, if either is unknown or a value is not a literal.
    """
    spec = spec.strip()
    name, _, rest = spec.partition("(")
    by_name = {cls.name: cls for cls in registered_models().values() if cls.name}
    if name not in by_name and name in OPTIONAL_MODELS:
        _, package, extra = OPTIONAL_MODELS[name]
        raise ValueError(
            f"model {name!r} needs {package}: pip install 'lifelong-rec[{extra}]' "
            "(install torch==2.13.0 first for the CPU build)"
        )
    if name not in by_name:
        raise ValueError(f"unknown model {name!r}; use {', '.join(sorted(by_name))}")
    model_class = by_name[name]
    params: dict[str, object] = {}
    if rest:
        if not rest.endswith(")"):
            raise ValueError(f"model {spec!r}: parameters go in parentheses, name(a=1, b=2)")
        allowed = set(inspect.signature(model_class.__init__).parameters) - {"self"}
        for entry in filter(None, (part.strip() for part in rest[:-1].split(","))):
            key, equals, text = (part.strip() for part in entry.partition("="))
            if not equals or key not in allowed:
                raise ValueError(
                    f"model {spec!r}: {entry!r} is not one of {', '.join(sorted(allowed))}=VALUE"
                )
            try:
                params[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                params[key] = text  # a bare word: a string such as an optimiser's name
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
    parts, depth, current = [], 0, []
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]
