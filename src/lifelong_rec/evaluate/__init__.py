"""Evaluation: ranking metrics, hold-out checks, and protocol P1 (prequential)."""

from lifelong_rec.evaluate.holdout import random_precision, temporal_hit_rate
from lifelong_rec.evaluate.leave_one_out import (
    LeaveOneOutSplit,
    P2Report,
    P2Result,
    leave_one_out,
    leave_one_out_split,
)
from lifelong_rec.evaluate.metrics import coverage, hits, ndcg, novelty, recall, reciprocal_rank
from lifelong_rec.evaluate.ope import (
    DM,
    DR,
    IPS,
    SNIPS,
    BanditLog,
    ReplayResult,
    SmoothedClickRates,
    SwitchDR,
    beta_posterior,
    broadcast_target,
    logged_action_distribution,
    ope_report,
    replay,
    replay_report,
    thompson_action_distribution,
    uniform_action_distribution,
)
from lifelong_rec.evaluate.prequential import P1Report, StrategyResult, Stream, prepare, prequential
from lifelong_rec.evaluate.report import markdown_table, plot, write_report

__all__ = [
    "DM",
    "DR",
    "IPS",
    "SNIPS",
    "BanditLog",
    "LeaveOneOutSplit",
    "P1Report",
    "P2Report",
    "P2Result",
    "ReplayResult",
    "SmoothedClickRates",
    "StrategyResult",
    "Stream",
    "SwitchDR",
    "beta_posterior",
    "broadcast_target",
    "coverage",
    "hits",
    "leave_one_out",
    "leave_one_out_split",
    "logged_action_distribution",
    "markdown_table",
    "ndcg",
    "novelty",
    "ope_report",
    "plot",
    "prepare",
    "prequential",
    "random_precision",
    "recall",
    "reciprocal_rank",
    "replay",
    "replay_report",
    "temporal_hit_rate",
    "thompson_action_distribution",
    "uniform_action_distribution",
    "write_report",
]

# P4: the closed-loop simulator and its A/B harness.
from lifelong_rec.evaluate.simulate import (
    ABReport,
    OraclePolicy,
    Simulator,
    SimulatorConfig,
    ab_test,
    assign_arms,
    simulate_report,
    two_proportion_test,
)

__all__ += [
    "ABReport",
    "OraclePolicy",
    "Simulator",
    "SimulatorConfig",
    "ab_test",
    "assign_arms",
    "simulate_report",
    "two_proportion_test",
]
