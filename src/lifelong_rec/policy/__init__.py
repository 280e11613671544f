"""Exploration policies that turn scores into slates with propensities, and learn from rewards."""

from lifelong_rec.policy.base import Context, Policy, policy_names, registered_policies
from lifelong_rec.policy.decisions import Decision, Decisions
from lifelong_rec.policy.greedy import EpsilonGreedy, Greedy, UniformRandom
from lifelong_rec.policy.linucb import LinUCB
from lifelong_rec.policy.rewards import REWARD_PRESETS, RewardSpec, reward_spec
from lifelong_rec.policy.ridge import RidgeArms
from lifelong_rec.policy.serve import Slates, serve, standardised_scores
from lifelong_rec.policy.softmax import Softmax, plackett_luce_marginals
from lifelong_rec.policy.specs import parse_policy
from lifelong_rec.policy.thompson import BernoulliThompson, LinearThompson

__all__ = [
    "REWARD_PRESETS",
    "BernoulliThompson",
    "Context",
    "Decision",
    "Decisions",
    "EpsilonGreedy",
    "Greedy",
    "LinUCB",
    "LinearThompson",
    "Policy",
    "RewardSpec",
    "RidgeArms",
    "Slates",
    "Softmax",
    "UniformRandom",
    "parse_policy",
    "plackett_luce_marginals",
    "policy_names",
    "registered_policies",
    "reward_spec",
    "serve",
    "standardised_scores",
]
