"""Protocol P4: a seeded simulated world and the A/B harness that tests policies in it."""

from lifelong_rec.evaluate.simulate.abtest import (
    ABReport,
    ArmResult,
    Comparison,
    OraclePolicy,
    ab_test,
    assign_arms,
    stable_hash,
    standardised_scores,
)
from lifelong_rec.evaluate.simulate.report import arm_names, simulate_report
from lifelong_rec.evaluate.simulate.stats import (
    ProportionTest,
    bootstrap_over_users,
    two_proportion_test,
)
from lifelong_rec.evaluate.simulate.world import Simulator, SimulatorConfig

__all__ = [
    "ABReport",
    "ArmResult",
    "Comparison",
    "OraclePolicy",
    "ProportionTest",
    "Simulator",
    "SimulatorConfig",
    "ab_test",
    "arm_names",
    "assign_arms",
    "bootstrap_over_users",
    "simulate_report",
    "stable_hash",
    "standardised_scores",
    "two_proportion_test",
]
