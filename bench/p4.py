"""Protocol P4 (closed-loop simulation): exploring policies against Greedy over MF scores in an
A/B test that shares one drifting world by user hash.

Each arm has its own matrix factorisation (16 factors), fitted on 50 warm-up rounds of
uniform-random slates and then learning from the arm's own impressions and clicks every round.
The policies read the MF scores (standardised per user) plus the simulator's user features (a
noisy view of the taste) and item features (topic one-hot).

Scenarios (the world is SimulatorConfig's defaults). The item turnover of those defaults was
slowed once, after a first look (attractiveness half-life 100 -> 300 rounds, lifetime 200 ->
500, arrivals 0.5 -> 0.2 per round): in the first world Greedy over MF showed fewer clicks
than uniform-random slates, a world where the learned model is worth nothing. That criterion
is about the baseline; no parameter was chosen by how the exploring policies did.
- drift: tastes drift (random walk, topic switches), items arrive, fade and retire. The
  headline, run with several seeds.
- static: the control, with no drift, no new items and no fading.
- ablation: LinUCB with alpha=0 (greedy on its own ridge estimate, no exploration) next to
  LinUCB, in the drift world, to separate exploration from the extra features LinUCB reads;
  with uniform-random slates and the oracle as floor and ceiling.

Target (issue #6): in the drift world at least one exploring policy gains more cumulative
reward than Greedy; the gain is reported as the difference in click rate (clicks per
impression) with its 95 % intervals (normal two-proportion, and a bootstrap over users) and a
two-sided z-test p-value.

Run: .venv/bin/python bench/p4.py [--rounds 2000] [--seeds 0,1,2]
     [--scenarios drift,static,ablation]
Writes bench/results/p4.json (with the machine), p4.png (drift, first seed) and p4-*.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

from common import RESULTS, machine

from lifelong_rec.evaluate.simulate import SimulatorConfig, ab_test, arm_names
from lifelong_rec.evaluate.simulate.report import json_safe

POLICIES = ["greedy", "epsilon(epsilon=0.1)", "softmax", "linucb", "thompson"]
ABLATION = ["greedy", "linucb", "linucb(alpha=0.0)", "random", "oracle"]
DRIFT = SimulatorConfig()
STATIC = dataclasses.replace(
    DRIFT, taste_drift=0.0, topic_switch_rate=0.0, item_arrival_rate=0.0,
    item_lifetime=math.inf, item_half_life=math.inf,
)  # fmt: skip
SCENARIOS = {
    "drift": (DRIFT, POLICIES),
    "static": (STATIC, POLICIES),
    "ablation": (DRIFT, ABLATION),
}


def target(result: dict) -> dict[str, object]:
    """The best exploring arm against Greedy, and whether it gains with confidence."""
    best = max(result["comparisons"], key=lambda c: c["click_rate_difference"])
    by_arm = {arm["arm"]: arm for arm in result["arms"]}
    greedy, arm = by_arm["greedy"], by_arm[best["arm"]]
    return {
        "best_arm": best["arm"],
        "click_rate_difference": best["click_rate_difference"],
        "interval": best["interval"],
        "bootstrap_interval": best["bootstrap_interval"],
        "p_value": best["p_value"],
        "relative_lift": best["relative_lift"],
        # Cumulative reward at equal traffic: the arms' shares of the slates differ a little.
        "extra_clicks_per_1000_slates": 1000
        * (arm["clicks_per_slate"] - greedy["clicks_per_slate"]),
        "arms_above_greedy": [c["arm"] for c in result["comparisons"] if c["interval"][0] > 0],
        "meets_target": best["interval"][0] > 0 and best["bootstrap_interval"][0] > 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2_000)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the drift scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    started = time.perf_counter()
    for scenario in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        config, specs = SCENARIOS[scenario]
        for seed in seeds if scenario == "drift" else seeds[:1]:
            begun = time.perf_counter()
            report = ab_test(config, dict(zip(arm_names(specs), specs, strict=True)),
                             args.rounds, seed)  # fmt: skip
            name = f"p4-{scenario}-seed{seed}"
            plot = RESULTS / (
                "p4.png" if (scenario, seed) == ("drift", seeds[0]) else f"{name}.png"
            )
            RESULTS.mkdir(parents=True, exist_ok=True)
            report.plot(plot)
            result = report.to_dict(curves=False) | {
                "scenario": scenario,
                "specs": dict(zip(arm_names(specs), specs, strict=True)),
                "plot": str(plot.relative_to(RESULTS.parent.parent)),
                "seconds": round(time.perf_counter() - begun, 1),
            }
            if scenario != "ablation":  # the ablation's arms include the oracle
                result["target"] = target(result)
            runs.append(result)
            print(f"\n## P4 {scenario}, seed {seed} ({result['seconds']} s)\n")
            print(report.to_markdown())
    payload = {
        "benchmark": "p4",
        "protocol": "P4",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "rounds": args.rounds,
        "seeds": seeds,
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "p4.json").write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    headline = [
        {"scenario": r["scenario"], "seed": r["seed"]} | r["target"] for r in runs if "target" in r
    ]
    print("\n" + json.dumps(json_safe(headline), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
