"""P4 reports for people: the Markdown table, the curves as a PNG, and
:func:`simulate_report`, what ``lifelong-rec simulate`` runs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from lifelong_rec.evaluate.simulate.abtest import ab_test
from lifelong_rec.evaluate.simulate.world import SimulatorConfig

if TYPE_CHECKING:
    from lifelong_rec.evaluate.simulate.abtest import ABReport


def markdown(report: ABReport) -> str:
    """One row per arm: cumulative reward, click rate, regret, and the verdict against the
    baseline (the first arm); then the settings."""
    percent = f"{report.level * 100:g} %"
    lines = [
        f"| arm | slates | clicks | click rate | clicks/slate | regret | regret/slate "
        f"| Δ click rate vs {report.arms[0].name} [{percent} CI] | bootstrap CI over users "
        f"| p | lift |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    versus = {c.arm: c for c in report.comparisons}
    for arm in report.arms:
        row = arm.summary()
        cells = [
            arm.name, f"{row['slates']:,}", f"{row['clicks']:,}", f"{row['click_rate']:.4f}",
            f"{row['clicks_per_slate']:.4f}", f"{row['regret']:,.1f}",
            f"{row['regret_per_slate']:.4f}",
        ]  # fmt: skip
        comparison = versus.get(arm.name)
        if comparison is None:
            cells += ["(baseline)", "", "", ""]
        else:
            test = comparison.test
            cells += [
                f"{test.difference:+.4f} [{test.interval[0]:+.4f}, {test.interval[1]:+.4f}]",
                f"[{comparison.bootstrap_interval[0]:+.4f}, "
                f"{comparison.bootstrap_interval[1]:+.4f}]",
                _p_value(test.p_value),
                f"{comparison.relative_lift:+.1%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    c = report.config
    lines += [
        "",
        f"P4: {report.rounds:,} rounds after {report.warmup_rounds} warm-up rounds of "
        f"uniform-random slates, {c.users_per_round} users per round split by user hash over "
        f"{len(report.arms)} arms, seed {report.seed}; {c.n_users:,} users, "
        f"{c.n_items_initial} items at the start, {c.item_arrival_rate:g} new per round, "
        f"lifetime {c.item_lifetime:g} rounds, attractiveness half-life {c.item_half_life:g} "
        f"rounds; taste drift {c.taste_drift:g} per round, reversion {c.taste_reversion:g}, "
        f"topic switch rate {c.topic_switch_rate:g}; k = {c.k}, examination "
        f"{list(c.position_bias)}. Model per arm: {report.model}. Click rate: clicks per "
        f"impression; CI: two-proportion normal interval; p: pooled two-sided z test.",
    ]
    return "\n".join(lines)


def plot_curves(report: ABReport, path: str | Path, window: int = 100) -> None:
    """Cumulative clicks, cumulative expected regret, and the click rate per impression
    (rolling over ``window`` rounds), one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 5), dpi=110)
    for index, arm in enumerate(report.arms):
        color = plt.cm.tab10(index % 10)
        label = f"{arm.name} ({arm.click_rate:.4f})"
        axes[0].plot(np.cumsum(arm.clicks), color=color, label=label)
        axes[1].plot(np.cumsum(arm.oracle - arm.expected), color=color, label=arm.name)
        kernel = np.ones(max(1, window))
        clicks = np.convolve(arm.clicks, kernel)[: report.rounds]
        shown = np.convolve(arm.slates * arm.k, kernel)[: report.rounds]
        rate = np.divide(clicks, shown, out=np.full(report.rounds, np.nan), where=shown > 0)
        axes[2].plot(rate, color=color, label=arm.name)
    titles = ("cumulative clicks (reward)", "cumulative expected regret vs the oracle",
              f"click rate per impression, rolling {window} rounds")  # fmt: skip
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="arm (click rate)", title_fontsize=8)
    figure.suptitle(
        f"P4: {len(report.arms)} arms sharing the traffic by user hash, seed {report.seed}"
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def simulate_report(
    policies: Sequence[str],
    rounds: int,
    out: Path | None,
    seed: int = 0,
    *,
    config: SimulatorConfig | None = None,
    warmup_rounds: int = 50,
    level: float = 0.95,
    n_boot: int = 2_000,
) -> dict[str, object]:
    """Protocol P4: an A/B test of ``policies`` in the simulated world; what the CLI runs.

    Parameters
    ----------
    policies : sequence of str
        Policy specs (``"greedy"``, ``"epsilon(epsilon=0.1)"``, ``"oracle"``...); the first is
        the baseline. An arm is named after its spec's policy name, with ``#2``, ``#3``...
        when the name repeats.
    rounds : int
    out : path or None
        A folder for p4.json, p4.md and p4.png (created); None writes nothing.
    seed : int
    config : SimulatorConfig, optional
        The world; the default :class:`SimulatorConfig` (drift, items arriving and fading).
    warmup_rounds, level, n_boot
        See :func:`ab_test`.

    Returns
    -------
    dict
        JSON-ready: :meth:`ABReport.to_dict` without the curves, the arms' specs, the
        Markdown table and, when written, the paths.
    """
    specs = [str(spec).strip() for spec in policies]
    if not specs or not all(specs):
        raise ValueError("policies: give one or more policy specs, none empty")
    arms = arm_names(specs)
    report = ab_test(
        config or SimulatorConfig(), dict(zip(arms, specs, strict=True)), rounds, seed,
        warmup_rounds=warmup_rounds, level=level, n_boot=n_boot,
    )  # fmt: skip
    table = report.to_markdown()
    result = report.to_dict(curves=False) | {"specs": dict(zip(arms, specs, strict=True))}
    result["markdown"] = table
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / f"p4.{suffix}" for name, suffix in
                 (("json", "json"), ("markdown", "md"), ("plot", "png"))}  # fmt: skip
        full = report.to_dict(curves=True) | {"specs": result["specs"]}
        paths["json"].write_text(json.dumps(json_safe(full), indent=2) + "\n")
        paths["markdown"].write_text(table + "\n")
        report.plot(paths["plot"])
        result["paths"] = {name: str(path) for name, path in paths.items()}
    return json_safe(result)


def arm_names(specs: Sequence[str]) -> list[str]:
    """Arm names from specs: the policy name, ``#2``, ``#3``... when it repeats.

    >>> arm_names(["greedy", "epsilon(epsilon=0.1)", "epsilon(epsilon=0.3)"])
    ['greedy', 'epsilon', 'epsilon#2']
    """
    names: list[str] = []
    for spec in specs:
        base = spec.partition("(")[0].strip()
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}#{count}"
        names.append(name)
    return names


def _p_value(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


@overload
def json_safe(value: dict[Any, Any]) -> dict[str, object]: ...
@overload
def json_safe(value: object) -> object: ...
def json_safe(value: object) -> object:
    """NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
