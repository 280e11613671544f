"""Exploration policies that turn scores into slates with propensities, and learn from rewards."""

from lifelong_rec.policy.base import Context, Policy, policy_names, registered_policies
from lifelong_rec.policy.decisions import Decision, Decisions
from lifelong_rec.policy.greedy import EpsilonGreedy, Greedy, UniformRandom
from lifelong_rec.policy.linucb import LinUCB
from lifelong_rec.policy.rewards import (
    PURCHASE_WEIGHTS,
    click_reward,
    purchase_reward,
    watch_reward,
)
from lifelong_rec.policy.ridge import RidgeArms
from lifelong_rec.policy.softmax import Softmax, plackett_luce_marginals
from lifelong_rec.policy.specs import parse_policy
from lifelong_rec.policy.thompson import BernoulliThompson, LinearThompson

__all__ = [
    "PURCHASE_WEIGHTS",
    "BernoulliThompson",
    "Context",
    "Decision",
    "Decisions",
    "EpsilonGreedy",
    "Greedy",
    "LinUCB",
    "LinearThompson",
    "Policy",
    "RidgeArms",
    "Softmax",
    "UniformRandom",
    "click_reward",
    "parse_policy",
    "plackett_luce_marginals",
    "policy_names",
    "purchase_reward",
    "registered_policies",
    "watch_reward",
]
