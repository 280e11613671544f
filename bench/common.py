"""Shared by the benchmarks: where the data is, what machine ran them, where results go."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy
import pandas

import lifelong_rec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATASETS = Path(os.environ.get("LIFELONG_REC_DATASETS", ROOT.parent / "shared" / "datasets"))


def machine() -> dict[str, object]:
    """What ran the benchmark: CPU model, cores, memory, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("\n", 1)[0].split()[1])
        memory_gib = round(kib / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "lifelong_rec": lifelong_rec.__version__,
        "torch": _version("torch"),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def timed(run: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall-clock seconds of ``repeats`` runs, and all of them."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), seconds


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and the largest of ``seconds``, in milliseconds."""
    ms = 1e3 * numpy.asarray(seconds)
    return {
        f"{name}_ms": round(float(numpy.percentile(ms, q)), 2)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def report(name: str, results: dict[str, object]) -> None:
    """Print the results as JSON and keep them as bench/results/NAME.json."""
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **results,
    }
    text = json.dumps(payload, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)
