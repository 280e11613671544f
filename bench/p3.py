"""Protocol P3 (off-policy evaluation) on the Open Bandit Dataset sample.

For each campaign (all, men, women): the BTS policy's click rate estimated from the uniform-
random log, and the random policy's from the BTS log, with IPS, SNIPS, DM, DR and Switch-DR,
against the on-policy truth (the evaluated policy's own mean click); relative errors with 95 %
bootstrap intervals. The BTS action distribution is the Monte Carlo from Beta posteriors
estimated on the BTS log ("bts"); "bts-logged" repeats the estimate with the distribution BTS
actually showed in its log, to separate the estimators' error from that of the reconstructed
distribution. Then the replay (Li et al., WSDM 2011) of the learning policies over the random
log, next to the logged policies' click rates.

Run: .venv/bin/python bench/p3.py [--campaigns all,men,women] [--bootstrap 1000]
     [--policies "greedy;epsilon(epsilon=0.1);linucb;thompson"] [--batch-size 1]
Writes bench/results/p3-obd.json (with the machine) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

from common import DATASETS, RESULTS, machine

from lifelong_rec.evaluate import ope_report, replay_report

POLICIES = "greedy;epsilon(epsilon=0.1);linucb;thompson"
DIRECTIONS = (("random", "bts"), ("random", "bts-logged"), ("bts", "random"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--campaigns", default="all,men,women")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--n-sim", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default=POLICIES, help="policy specs, ';'-separated")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    source = DATASETS / "obd"
    if not (source / "random").is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    campaigns = [c.strip() for c in args.campaigns.split(",") if c.strip()]
    started = time.perf_counter()
    reports = [
        ope_report(source, campaign, behavior, evaluation, bootstrap=args.bootstrap,
                   seed=args.seed, n_sim=args.n_sim)
        for campaign in campaigns
        for behavior, evaluation in DIRECTIONS
    ]  # fmt: skip
    ope_seconds = time.perf_counter() - started
    replays, skipped = [], None
    if importlib.util.find_spec("lifelong_rec.policy") is None:
        skipped = "lifelong_rec.policy is not installed: replay skipped"
        print(skipped, file=sys.stderr)
    else:
        for campaign in campaigns:
            for spec in filter(None, (s.strip() for s in args.policies.split(";"))):
                begun = time.perf_counter()
                replays.append(
                    replay_report(
                        source, campaign, spec, batch_size=args.batch_size, seed=args.seed
                    )
                    | {"seconds": round(time.perf_counter() - begun, 1)}
                )
    payload = {
        "benchmark": "p3-obd",
        "protocol": "P3",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "data": str(source),
        "ope_seconds": round(ope_seconds, 1),
        "ope": reports,
        "replay": replays,
        "replay_skipped": skipped,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "p3-obd.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(ope_table(reports))
    if replays:
        print()
        print(replay_table(replays))
    return 0


def ope_table(reports: list[dict]) -> str:
    """One row per (campaign, direction, estimator)."""
    lines = [
        "| campaign | evaluated ← log | truth [95 % CI] | estimator | estimate [95 % CI] "
        "| relative error [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for report in reports:
        truth = f"{_pct(report['truth'])} {_range(report['truth_interval'], _pct)}"
        for row in report["estimates"]:
            lines.append(
                f"| {report['campaign']} | {report['evaluation']} ← {report['behavior']} "
                f"| {truth} | {row['estimator']} "
                f"| {_pct(row['estimate'])} {_range(row['interval'], _pct)} "
                f"| {row['relative_error']:.2f} {_range(row['relative_error_interval'], _num)} |"
            )
    return "\n".join(lines)


def replay_table(replays: list[dict]) -> str:
    """One row per (campaign, policy), with the logged policies' click rates."""
    lines = [
        "| campaign | policy | counted rows | clicks | replay click rate [95 % CI] "
        "| random log | BTS log |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in replays:
        logged = {
            name: f"{_pct(v['click_rate'])} {_range(v['interval'], _pct)}"
            for name, v in r["logged"].items()
        }
        lines.append(
            f"| {r['campaign']} | {r['policy']} | {r['counted_rows']} | {r['clicks']:g} "
            f"| {_pct(r['estimate'])} {_range(r['interval'], _pct)} "
            f"| {logged.get('random', '')} | {logged.get('bts', '')} |"
        )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.3f} %"


def _num(value: float) -> str:
    return f"{value:.2f}"


def _range(pair: tuple[float, float], fmt) -> str:
    low, high = pair
    return f"[{fmt(low).removesuffix(' %')}, {fmt(high)}]"


if __name__ == "__main__":
    sys.exit(main())
