"""Protocol P3 on the Open Bandit Dataset (OBD): action distributions and :func:`ope_report`.

The Bernoulli Thompson sampling (BTS) policy of OBD
    Its authors compute its action distribution by Monte Carlo from the Beta posteriors behind
    their production log. Their posteriors are not part of the data, so
    :func:`beta_posterior` estimates them from the BTS log itself: per item (positions pooled),
    ``Beta(alpha0 + clicks, beta0 + impressions - clicks)`` with a prior whose mean is the log's
    click rate mu and which weighs as much as one click (``alpha0 = 1, beta0 = 1/mu - 1``); the
    flat Beta(1, 1) would, at click rates of 0.4 %, put rarely shown items first.
    :func:`thompson_action_distribution` draws ``n_sim`` samples, ranks the items of each draw
    and counts how often each item lands at each position. Limitation: the sample log has about
    10,000 rows, a thousandth of the production log, so these posteriors are far wider than the
    ones the policy used, and the production posteriors drifted during the week; the distance
    between this distribution and what BTS actually showed (:func:`logged_action_distribution`,
    the per-position frequency of each item in the BTS log, whose expectation is the week's
    time-averaged BTS distribution) is reported next to every estimate: on the OBD sample it
    is 0.6-0.75 in total variation at each position, the Monte-Carlo distribution being much
    flatter than what BTS showed. :func:`ope_report` therefore also offers ``"bts-logged"``,
    which evaluates that logged frequency instead (it reads only which items the BTS log
    showed, not its clicks, but it is the time average, not the per-moment policy). The logged
    ``propensity_score`` is only known for the item shown, and the moments when an item is
    shown are those when its probability was high, so averaging logged propensities
    overestimates the time-averaged probability; they are used here as the behaviour
    propensities of the BTS log, and as a check of how concentrated the Monte-Carlo
    distribution is (the mean logged propensity at a position estimates
    ``E_t[sum_a p_t(a, k)^2]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lifelong_rec.data import load
from lifelong_rec.evaluate.ope.estimators import (
    _CHUNK_CELLS,
    ESTIMATORS,
    BanditLog,
    _Estimator,
    bootstrap_ratio,
    importance_weights,
    percentile_interval,
)
from lifelong_rec.events import Catalog, EventBatch

# ------------------------------------------------------------------------------ P3 on OBD


OBD_POLICIES = ("random", "bts")
EVALUATIONS = ("bts", "bts-logged", "random")


def ope_report(
    log_path: str | Path,
    campaign: str = "all",
    behavior: str = "random",
    evaluation: str = "bts",
    estimators: Sequence[str | _Estimator] = ("ips", "snips", "dm", "dr", "switch-dr"),
    bootstrap: int = 1000,
    seed: int = 0,
    *,
    n_sim: int = 100_000,
    level: float = 0.95,
) -> dict[str, object]:
    """Protocol P3 on OBD: one policy's click rate estimated from the other policy's log.

    Parameters
    ----------
    log_path : path
        The OBD folder that holds ``random/<campaign>`` and ``bts/<campaign>``.
    campaign : {"all", "men", "women"}
    behavior : {"random", "bts"}
        The policy whose log the estimate uses.
    evaluation : {"bts", "bts-logged", "random"}
        The evaluated policy: BTS with the Monte-Carlo distribution, BTS with the distribution
        it showed in its log (:func:`logged_action_distribution`), or uniform random.
    estimators : names (ips, snips, dm, dr, switch-dr) or estimator objects
    bootstrap : int
        Resamples for the intervals.
    seed : int
        Seeds the bootstrap (and, plus one, the truth's), the folds and the Monte Carlo.
    n_sim : int
        Monte-Carlo draws for the BTS distribution.

    Returns
    -------
    dict
        JSON-ready: the truth (mean click of the evaluated policy's own log) with its interval,
        the evaluation distribution and its diagnostics, and per estimator the estimate, the
        relative error ``|estimate - truth| / truth`` and their intervals (the relative error's
        resamples both logs independently).
    """
    if behavior not in OBD_POLICIES:
        raise ValueError(f"behavior: must be one of {', '.join(OBD_POLICIES)}, got {behavior!r}")
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation: must be one of {', '.join(EVALUATIONS)}, got {evaluation!r}")
    chosen = [_estimator(e) for e in estimators]
    evaluated = evaluation.split("-")[0]
    behavior_events, catalog = _read_obd(log_path, behavior, campaign)
    evaluation_events, evaluation_catalog = _read_obd(log_path, evaluated, campaign)
    if set(catalog.item) != set(evaluation_catalog.item):
        raise ValueError(f"campaign: the {behavior} and {evaluated} logs have different items")
    log = BanditLog.from_events(behavior_events, catalog)
    truth_log = BanditLog.from_events(evaluation_events, catalog)
    n_positions = max(log.n_positions, truth_log.n_positions)
    distribution, diagnostics = _evaluation_distribution(
        evaluation, truth_log, n_positions, n_sim, seed
    )
    target = broadcast_target(distribution, len(log))
    truth = float(truth_log.rewards.mean())
    truth_replicates = bootstrap_ratio(truth_log.rewards, n_boot=bootstrap, seed=seed + 1)
    weights = importance_weights(log, target)
    rows = []
    for estimator in chosen:
        value = estimator.estimate(log, target)
        replicates = estimator.bootstrap(log, target, bootstrap, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            errors = np.abs(replicates - truth_replicates) / truth_replicates
        rows.append(
            {
                "estimator": estimator.label,
                "estimate": value,
                "interval": percentile_interval(replicates, level),
                "relative_error": abs(value - truth) / truth if truth > 0 else math.nan,
                "relative_error_interval": percentile_interval(errors, level),
            }
        )
    return {
        "protocol": "P3",
        "campaign": campaign,
        "behavior": behavior,
        "evaluation": evaluation,
        "behavior_rows": len(log),
        "behavior_click_rate": float(log.rewards.mean()),
        "truth": truth,
        "truth_interval": percentile_interval(truth_replicates, level),
        "truth_rows": len(truth_log),
        "items": log.n_actions,
        "positions": n_positions,
        "bootstrap": bootstrap,
        "level": level,
        "seed": seed,
        "max_weight": float(weights.max()),
        "effective_rows": float(weights.sum() ** 2 / max(float((weights**2).sum()), 1e-300)),
        "distribution": diagnostics,
        "estimates": rows,
    }


def _estimator(spec: str | _Estimator) -> _Estimator:
    if isinstance(spec, _Estimator):
        return spec
    if spec not in ESTIMATORS:
        raise ValueError(f"estimators: {spec!r} is not one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[spec]()


def _read_obd(root: str | Path, policy: str, campaign: str) -> tuple[EventBatch, Catalog]:
    folder = Path(root) / policy / campaign
    if not folder.is_dir():
        raise ValueError(
            f"log_path: {folder} not found; pass the OBD folder holding {policy}/{campaign}"
        )
    data = load(folder, "obd")
    return data.events.sorted_by_time(), data.catalog


def _evaluation_distribution(
    evaluation: str, policy_log: BanditLog, n_positions: int, n_sim: int, seed: int
) -> tuple[np.ndarray, dict[str, object]]:
    logged = logged_action_distribution(policy_log, n_positions)
    if evaluation == "random":
        distribution = uniform_action_distribution(policy_log.n_actions, n_positions)
        return distribution, {"method": "uniform: 1 / n_items at every position"}
    if evaluation == "bts-logged":
        method = "frequency of each item at each position in the BTS log"
        distribution = logged
    else:
        prior = default_prior(policy_log)
        alpha, beta = beta_posterior(policy_log, prior)
        distribution = thompson_action_distribution(alpha, beta, n_positions, n_sim, seed)
        method = (
            f"Monte Carlo ({n_sim} draws) from per-item Beta posteriors of the BTS log, "
            f"prior Beta({prior[0]:g}, {prior[1]:.4g})"
        )
    per_position = [
        float(policy_log.propensities[policy_log.positions == k].mean()) for k in range(n_positions)
    ]
    return distribution, {
        "method": method,
        "total_variation_to_logged": (0.5 * np.abs(distribution - logged).sum(0)).tolist(),
        "sum_of_squares": (distribution**2).sum(0).tolist(),
        "mean_logged_propensity": per_position,
    }


# ----------------------------------------------------------------------- action distributions


def broadcast_target(distribution: np.ndarray, n_rows: int) -> np.ndarray:
    """A context-free distribution, shape (n_actions, n_positions), as a target for ``n_rows``.

    A read-only view: no memory per row.
    """
    distribution = np.asarray(distribution, dtype=np.float64)
    return np.broadcast_to(distribution, (n_rows, *distribution.shape))


def uniform_action_distribution(n_actions: int, n_positions: int = 3) -> np.ndarray:
    """The uniform random policy: ``1 / n_actions`` everywhere, shape (n_actions, n_positions)."""
    return np.full((n_actions, n_positions), 1.0 / n_actions)


def logged_action_distribution(log: BanditLog, n_positions: int | None = None) -> np.ndarray:
    """How often each action was logged at each position, shape (n_actions, n_positions).

    Each column sums to 1 (a position without rows gets the uniform distribution). For a log of
    a changing policy its expectation is the policy's distribution averaged over the log's time.
    """
    n_positions = n_positions or log.n_positions
    counts = np.zeros((log.n_actions, n_positions))
    np.add.at(counts, (log.actions, log.positions), 1.0)
    totals = counts.sum(0)
    counts[:, totals == 0] = 1.0
    return counts / counts.sum(0)


def beta_posterior(
    log: BanditLog, prior: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-item Beta posteriors of the click rate from a log, positions pooled.

    Parameters
    ----------
    prior : (alpha0, beta0), optional
        Default: mean equal to the log's click rate mu, as heavy as one click
        (``1, 1/mu - 1``); ``(1, 1)`` when the log has no click.

    Returns
    -------
    alpha, beta : arrays, shape (n_actions,)
    """
    clicks = np.bincount(log.actions, weights=log.rewards, minlength=log.n_actions)
    shown = np.bincount(log.actions, minlength=log.n_actions).astype(np.float64)
    alpha0, beta0 = default_prior(log) if prior is None else prior
    if not (alpha0 > 0 and beta0 > 0):
        raise ValueError(f"prior: alpha0 and beta0 must be > 0, got {prior!r}")
    return alpha0 + clicks, beta0 + shown - clicks


def default_prior(log: BanditLog) -> tuple[float, float]:
    """Beta prior with the log's click rate mu as mean, as heavy as one click: ``(1, 1/mu - 1)``.

    ``(1, 1)`` when the log has no click.
    """
    rate = float(log.rewards.mean()) if len(log) else 0.0
    return (1.0, max(1.0 / rate - 1.0, 1.0)) if rate > 0 else (1.0, 1.0)


def thompson_action_distribution(
    alpha: np.ndarray,
    beta: np.ndarray,
    n_positions: int = 3,
    n_sim: int = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """Monte-Carlo action distribution of Bernoulli Thompson sampling over a ranked slate.

    Each simulation draws a click rate per item from ``Beta(alpha, beta)`` and shows the items
    with the highest draws at positions 0, 1, ...; the result is the frequency of each item at
    each position.

    Returns
    -------
    array, shape (n_actions, n_positions)
        Each column sums to 1.

    Examples
    --------
    >>> dist = thompson_action_distribution(np.array([50.0, 1]), np.array([50.0, 99]), 2, 1000)
    >>> dist.round(2).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    alpha, beta = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    n_actions = len(alpha)
    if alpha.shape != beta.shape or alpha.ndim != 1:
        raise ValueError(f"alpha, beta: expected equal shapes (n_actions,), got {alpha.shape}")
    if not 1 <= n_positions <= n_actions:
        raise ValueError(f"n_positions: must be in [1, {n_actions}], got {n_positions}")
    if n_sim < 1:
        raise ValueError(f"n_sim: must be >= 1, got {n_sim}")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_actions * n_positions)
    chunk = max(1, _CHUNK_CELLS // n_actions)
    for start in range(0, n_sim, chunk):
        draws = rng.beta(alpha, beta, size=(min(chunk, n_sim - start), n_actions))
        top = np.argpartition(-draws, n_positions - 1, axis=1)[:, :n_positions]
        ranked = np.take_along_axis(top, np.argsort(-np.take_along_axis(draws, top, 1), axis=1), 1)
        cells = ranked * n_positions + np.arange(n_positions)
        counts += np.bincount(cells.ravel(), minlength=n_actions * n_positions)
    return counts.reshape(n_actions, n_positions) / n_sim
