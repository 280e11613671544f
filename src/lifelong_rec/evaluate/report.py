"""P1 reports for people: a Markdown table, a plot of NDCG per block, and the JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import numpy as np

from lifelong_rec.evaluate.prequential import P1Report


def markdown_table(report: P1Report) -> str:
    """One row per (model, strategy), best NDCG first within each model, plus the oracle."""
    k = report.params["k"]
    lines = [
        f"| model | strategy | HR@{k} | NDCG@{k} | MRR@{k} | update CPU s | update wall s "
        f"| warm-up CPU s | peak MiB | unknown users "
        f"| forgetting: probe ΔNDCG@{k}, end − after (< 0: forgot) [95 % CI] | new-item HR@{k} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in sorted(report.results, key=lambda r: (r.model, -_finite(r.ndcg))):
        strategy = result.strategy + (f" (= {result.same_as})" if result.same_as else "")
        forgetting = result.backward_transfer
        lines.append(
            f"| {result.model} | {strategy} | {result.hr:.4f} | {result.ndcg:.4f} "
            f"| {result.mrr:.4f} | {result.update_cpu_seconds:.1f} | {result.update_seconds:.1f} "
            f"| {result.warmup_cpu_seconds:.1f} | {result.peak_memory_mib:.0f} "
            f"| {result.unknown_user_share:.1%} | {forgetting['delta']:+.4f} "
            f"[{forgetting['ci95_low']:+.4f}, {forgetting['ci95_high']:+.4f}] "
            f"| {result.new_items['hr']:.4f} |"
        )
    for cadence, ceiling in report.oracle.items():
        lines.append(
            f"| oracle | @{cadence} | {ceiling['hr']:.4f} | {ceiling['ndcg']:.4f} | | | | | | | | |"
        )
    ratios = report.lifelong_ratios()
    if ratios:
        lines += ["", "| model | strategy | NDCG vs retrain@1 | update CPU speed-up vs retrain@1 |",
                  "|---|---|---|---|"]  # fmt: skip
        for model, by_strategy in ratios.items():
            for strategy, ratio in by_strategy.items():
                lines.append(
                    f"| {model} | {strategy} | {ratio['ndcg_vs_retrain@1']:.3f} "
                    f"| {ratio['update_speedup_vs_retrain@1']:.1f}x |"
                )
    data = report.data
    lines += [
        "",
        f"P1: {data['rows']:,} rows ({data['duplicates_dropped']:,} duplicates dropped), "
        f"warm-up {report.params['warmup']:.0%} ({data['warmup_rows']:,} rows), "
        f"{report.params['blocks']} blocks, {data['scored_rows']:,} scored rows, "
        f"{data['users']:,} users, {data['items']:,} items; {data['probe_rows']:,} probes "
        f"held out, never learned ({data['probe_rows_removed']:,} rows with their pairs' "
        "later ones).",
    ]
    if "removed" in data:  # set by the CLI, which knows what cleaning removed
        counts = cast(dict[str, int], data["removed"])
        removed = ", ".join(f"{count:,} {reason}" for reason, count in counts.items())
        lines.append(
            f"Rows removed: {sum(counts.values()):,} of {data['rows_read']:,} read "
            f"({removed or 'none'})."
        )
    return "\n".join(lines)


def plot(report: P1Report, path: str | Path, window: int = 25, title: str = "") -> None:
    """NDCG@k per block (rolling mean over ``window`` blocks), one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report.params["k"]
    figure, axes = plt.subplots(figsize=(11, 6), dpi=110)
    styles = {"frozen": ":", "naive": "--"}
    for index, result in enumerate(sorted(report.results, key=lambda r: (r.model, r.strategy))):
        series = np.array(result.per_block["ndcg"], dtype=np.float64)
        smooth = _rolling(series, window)
        style = next((s for prefix, s in styles.items() if result.strategy.startswith(prefix)), "-")
        axes.plot(smooth, style, linewidth=1.6, color=plt.cm.tab20(index % 20),
                  label=f"{result.model} {result.strategy} ({result.ndcg:.3f})")  # fmt: skip
    axes.set_xlabel("block")
    axes.set_ylabel(f"NDCG@{k}, rolling mean of {window} blocks")
    axes.set_title(title or f"P1 prequential NDCG@{k} per block")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(report: P1Report, folder: str | Path, title: str = "") -> dict[str, Path]:
    """Write p1.json, p1.md and p1.png into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "p1.json", "markdown": folder / "p1.md", "plot": folder / "p1.png"}
    paths["json"].write_text(json.dumps(_clean(report.to_dict()), indent=2) + "\n")
    paths["markdown"].write_text(markdown_table(report) + "\n")
    plot(report, paths["plot"], title=title)
    return paths


def _rolling(series: np.ndarray, window: int) -> np.ndarray:
    """Rolling mean ignoring empty blocks (NaN)."""
    values = np.nan_to_num(series)
    counts = (~np.isnan(series)).astype(np.float64)
    kernel = np.ones(max(1, window))
    summed = np.convolve(values, kernel, mode="full")[: len(series)]
    counted = np.convolve(counts, kernel, mode="full")[: len(series)]
    return np.divide(summed, counted, out=np.full(len(series), np.nan), where=counted > 0)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _clean(value: object) -> object:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
