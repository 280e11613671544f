"""Policies from text: ``linucb(alpha=1.0, variant=hybrid)``, for the command line and the
benchmarks."""

from __future__ import annotations

import ast
import inspect

from lifelong_rec.policy.base import Policy, registered_policies


def parse_policy(spec: str, **defaults: object) -> Policy:
    """A policy from ``name`` or ``name(param=value, ...)``, e.g. ``epsilon(epsilon=0.1)``.

    Values are Python literals; a bare word is a string (``variant=hybrid``). ``defaults``
    (such as ``k`` or ``seed`` chosen by a harness) apply unless the spec sets them.

    Examples
    --------
    >>> parse_policy("linucb(alpha=0.5, variant=hybrid)")
    LinUCB(k=3, uniform_share=0.0, seed=0, alpha=0.5, regularization=1.0, variant='hybrid')

    Raises
    ------
    ValueError
        Naming the policy or parameter, if either is unknown, or a value, if the policy
        rejects it.
    """
    spec = spec.strip()
    name, _, rest = spec.partition("(")
    name = name.strip()
    by_name = registered_policies()
    if name not in by_name:
        raise ValueError(f"unknown policy {name!r}; use {', '.join(sorted(by_name))}")
    policy_class = by_name[name]
    allowed = set(inspect.signature(policy_class.__init__).parameters) - {"self"}
    unknown = set(defaults) - allowed
    if unknown:
        raise ValueError(f"policy {name!r} has no parameter {sorted(unknown)[0]!r}")
    params = dict(defaults)
    if rest:
        if not rest.endswith(")"):
            raise ValueError(f"policy {spec!r}: parameters go in parentheses, name(a=1, b=2)")
        for entry in filter(None, (part.strip() for part in rest[:-1].split(","))):
            key, equals, text = (part.strip() for part in entry.partition("="))
            if not equals or key not in allowed:
                raise ValueError(
                    f"policy {spec!r}: {entry!r} is not one of {', '.join(sorted(allowed))}=VALUE"
                )
            try:
                params[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                params[key] = text  # a bare word: a string such as a variant's name
    return policy_class(**params)
