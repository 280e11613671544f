"""Objects from short text specs, ``name`` or ``name(param=value, ...)``: models, text encoders
and policies are all named this way on the command line and in benchmarks."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping


def parse_spec(spec: str, choices: Mapping[str, type], what: str) -> tuple[type, dict[str, object]]:
    """The class named by ``spec`` among ``choices`` and its keyword arguments.

    Values are Python literals, tuples and lists of specs included (the commas inside
    brackets and quotes belong to the value); a bare word is taken as a string
    (``optimizer=adam``).
    ``what`` names the kind of object in error messages ("model", "text encoder", ...).

    Raises
    ------
    ValueError
        Naming the spec and the entry, if the name or a parameter is unknown, a parameter is
        given twice, or the parentheses are malformed.

    Examples
    --------
    >>> from lifelong_rec.models import BPR
    >>> parse_spec("bpr(factors=8, optimizer=adam)", {"bpr": BPR}, "model")
    (<class 'lifelong_rec.models.bpr.BPR'>, {'factors': 8, 'optimizer': 'adam'})
    >>> from lifelong_rec.models import Auto
    >>> parse_spec("auto(candidates=('pop', 'mf(factors=8, iterations=3)'))", {"auto": Auto},
    ...            "model")[1]
    {'candidates': ('pop', 'mf(factors=8, iterations=3)')}
    """
    if not isinstance(spec, str):
        raise TypeError(f"{what}: expected a spec string, got {spec!r}")
    text = spec.strip()
    name, opened, rest = text.partition("(")
    name = name.strip()
    if name not in choices:
        raise ValueError(f"unknown {what} {name!r}; use {', '.join(sorted(choices))}")
    chosen = choices[name]
    params: dict[str, object] = {}
    if not opened:
        return chosen, params
    if not rest.endswith(")"):
        raise ValueError(f"{what} {spec!r}: parameters go in parentheses, name(a=1, b=2)")
    # ``chosen`` is a class, so this is its own __init__ (mypy reads it as type.__init__).
    init = chosen.__init__  # type: ignore[misc]
    allowed = set(inspect.signature(init).parameters) - {"self"}
    for entry in filter(None, (part.strip() for part in _top_level(rest[:-1]))):
        key, equals, value = (part.strip() for part in entry.partition("="))
        if not equals or key not in allowed:
            raise ValueError(
                f"{what} {spec!r}: {entry!r} is not one of {', '.join(sorted(allowed))}=VALUE"
            )
        if key in params:
            raise ValueError(f"{what} {spec!r}: {key!r} is given twice")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value  # a bare word: a string such as an optimiser's name
    return chosen, params


def _top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for position, character in enumerate(text):
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "([{":
            depth += 1
        elif character in ")]}":
            depth -= 1
        elif character == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    parts.append(text[start:])
    return parts
