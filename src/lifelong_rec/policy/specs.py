"""Policies from text: ``linucb(alpha=1.0, variant=hybrid)``, for the command line and the
benchmarks."""

from __future__ import annotations

import inspect
from typing import Any, cast

from lifelong_rec.policy.base import Policy, registered_policies
from lifelong_rec.specs import parse_spec


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
    chosen, params = parse_spec(spec, registered_policies(), "policy")
    policy_class = cast(type[Policy], chosen)  # one of registered_policies()
    allowed = set(inspect.signature(policy_class).parameters)
    unknown = set(defaults) - allowed
    if unknown:
        raise ValueError(f"policy {policy_class.name!r} has no parameter {sorted(unknown)[0]!r}")
    arguments: dict[str, Any] = defaults | params  # the constructor checks each value
    return policy_class(**arguments)
