"""Explanations beyond one model's score: why a policy showed an item, and whether the reasons
a model gives really drive its scores.

- :func:`explain_decisions`: the model's explanation of every shown item, with the policy's
  propensity, and, where exploration put the item there, an exploration reason first.
- :func:`deletion_test`: the faithfulness check of the explanations (remove the history item
  a reason rests on and recompute: the score must drop, and by more than when a random
  history item goes).

The explanations themselves (:class:`~lifelong_rec.models.Explanation`, ``Reason``,
``Wording``) and each model's split of its score live with the models.
"""

from lifelong_rec.explain.decisions import explain_decisions
from lifelong_rec.explain.faithfulness import DeletionTest, deletion_test

__all__ = ["DeletionTest", "deletion_test", "explain_decisions"]
