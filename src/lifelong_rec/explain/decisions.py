"""Explanations of what a policy showed: the model's reasons, and exploration's."""

from __future__ import annotations

from dataclasses import replace

from lifelong_rec.models import Explanation, Reason, Recommender, Wording
from lifelong_rec.policy import Decisions


def explain_decisions(
    model: Recommender,
    decisions: Decisions,
    top: int = 3,
    wording: Wording | None = None,
) -> tuple[tuple[Explanation, ...], ...]:
    """Explain every shown item of ``decisions`` (made on ``model``'s scores).

    Each explanation is the model's (:meth:`Recommender.explain_many`, vectorised over the
    batch) with the item's ``propensity``. Where exploration placed the item
    (``Decisions.exploring``: outside the policy's own top ``k``), an exploration reason comes
    first: "Shown to explore new items: picked over higher-ranked ones, with probability
    0.03". It has weight 0: it is why the item was shown, not part of its score.

    Returns
    -------
    tuple of tuple of Explanation
        Per decision, one explanation per position, position 1 first.
    """
    if not isinstance(decisions, Decisions):
        raise TypeError(f"decisions must be Decisions, not {type(decisions).__name__}")
    wording = wording or Wording()
    explained = model.explain_many(decisions.users, decisions.slates, top, wording)
    exploring = decisions.exploring
    assert exploring is not None  # Decisions fills it in (all False when not given)
    out = []
    for row, explanations in enumerate(explained):
        shown = []
        for position, explanation in enumerate(explanations):
            propensity = float(decisions.propensities[row, position])
            reasons = explanation.reasons
            if exploring[row, position]:
                exploration = Reason("exploration", 0.0, wording.exploration(propensity))
                reasons = (exploration, *reasons)
            shown.append(replace(explanation, reasons=reasons, propensity=propensity))
        out.append(tuple(shown))
    return tuple(out)
