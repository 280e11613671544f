"""The A/B harness of P4: policies share the traffic of one simulated world by user hash, each
arm with its own matrix factorisation that learns from the arm's own clicks.

One round
---------
1. The world's users of the round arrive; each goes to the arm that the hash of its id names
   (:func:`assign_arms`), so an arm sees about ``1 / arms`` of the traffic, the same users
   every time, in the same world (same drift, same items) as every other arm.
2. For each arm: :func:`~lifelong_rec.policy.serve`, the service's own serving path, turns
   the arm's model and policy into slates over the live items (the model's top ``pool``,
   scores standardised per user, the user and item features); the world samples
   position-biased clicks; the policy learns from the clicks (``update``) and the model
   follows them through the arm's update :class:`~lifelong_rec.lifelong.Strategy`, as the
   service's learner does: the positive events of the round are one block.
3. The oracle's slates (the true top ``k``) give each user's best expected reward; an arm's
   expected regret is the sum, over its users, of that minus the expected reward of the slate
   it showed: it is never negative.
4. The world steps: tastes drift, items arrive and fade.

Before the first round, ``warmup_rounds`` rounds of uniform-random slates make a log on which
every arm's model is fitted (the same start for all).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.evaluate.simulate.stats import (
    ProportionTest,
    bootstrap_over_users,
    two_proportion_test,
)
from lifelong_rec.evaluate.simulate.world import Simulator, SimulatorConfig
from lifelong_rec.events import EventBatch, as_ids
from lifelong_rec.lifelong import Strategy, parse_strategy
from lifelong_rec.models import MatrixFactorization, Recommender
from lifelong_rec.policy import Context, Policy, UniformRandom, parse_policy
from lifelong_rec.policy.decisions import Decisions
from lifelong_rec.policy.serve import serve
from lifelong_rec.policy.serve import standardised_scores as standardised_scores  # re-exported
from lifelong_rec.policy.slates import one_hot_marginals, top_k

#: simulated seconds per round (the models' clocks: popularity decay, recency)
ROUND_SECONDS = 3_600.0

PolicyEntry = str | Callable[[Simulator], Policy]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


# ------------------------------------------------------------------------------ assignment


def stable_hash(ids: Iterable[object] | np.ndarray, salt: int = 0) -> np.ndarray:
    """A hash of each id that is the same in every process and on every machine.

    64-bit FNV-1a over the id's UTF-8 bytes (vectorised over the ids, looping over the byte
    positions), then the splitmix64 finaliser with ``salt`` mixed in, so that the low bits are
    as random as the high ones.

    Returns
    -------
    hashes : array of uint64, shape (n,)
    """
    values = as_ids(ids, "ids")
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = np.char.encode(values, "utf-8")
    width = encoded.dtype.itemsize
    raw = np.frombuffer(encoded.tobytes(), dtype=np.uint8).reshape(n, width)
    lengths = np.char.str_len(encoded)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for position in range(width):
        h = np.where(position < lengths, (h ^ raw[:, position]) * _FNV_PRIME, h)
    h = h + np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64)  # Python ints: no overflow warning
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def assign_arms(users: Iterable[object] | np.ndarray, n_arms: int, salt: int = 0) -> np.ndarray:
    """The arm of each user: ``stable_hash(user, salt) % n_arms``, equal shares in expectation.

    Examples
    --------
    >>> assign_arms(["u1", "u2", "u1"], 2).tolist() == assign_arms(["u1", "u2", "u1"], 2).tolist()
    True

    Returns
    -------
    arms : array of int64, shape (n,), in ``0 .. n_arms - 1``
    """
    check_positive_ints(n_arms=n_arms)
    return (stable_hash(users, salt) % np.uint64(n_arms)).astype(np.int64)


# ------------------------------------------------------------------------------ the oracle


class OraclePolicy(Policy, register=False):
    """The policy that knows the truth: the simulator's best slate for every user.

    Not registered with :func:`~lifelong_rec.policy.parse_policy` (it needs the simulator); in
    :func:`ab_test` the spec ``"oracle"`` makes one.

    Parameters
    ----------
    simulator : Simulator
        Read (never changed) at each decision: the users' tastes and the items' ages now.
    k, uniform_share, seed
        See :class:`~lifelong_rec.policy.Policy`.
    """

    def __init__(
        self, simulator: Simulator, k: int = 3, uniform_share: float = 0.0, seed: int = 0
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        if not isinstance(simulator, Simulator):
            raise TypeError(f"simulator must be a Simulator, not {type(simulator).__name__}")
        self.simulator = simulator

    name = "oracle"  # not registered: parse_policy cannot build it without a simulator

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        attraction = self.simulator.attraction(
            self.simulator.user_indexes(context.users),
            self.simulator.item_indexes(context.candidates),
        )
        slates = top_k(context.masked(attraction), context.k, stable=True)
        return slates, one_hot_marginals(slates, context.n_candidates)


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class ArmResult:
    """One arm of an A/B test, round by round.

    Attributes
    ----------
    name : str
    policy : str
        The policy with its parameters.
    k : int
    slates : array of int64, shape (rounds,)
        Slates shown (one per arriving user of the arm).
    clicks : array of float64, shape (rounds,)
    expected : array of float64, shape (rounds,)
        Expected clicks of the slates shown.
    oracle : array of float64, shape (rounds,)
        Expected clicks of the oracle's slates for the same users.
    shown_age : array of float64, shape (rounds,)
        Summed age (rounds since arrival) of the items shown.
    users : array of int64, shape (n,)
        The arm's users that were shown at least one slate (simulator indexes), ascending.
    user_clicks, user_impressions : arrays of float64, shape (n,)
        Each of those users' clicks and impressions over the test.
    seconds : float
        Time spent deciding, updating and learning.
    """

    name: str
    policy: str
    k: int
    slates: np.ndarray
    clicks: np.ndarray
    expected: np.ndarray
    oracle: np.ndarray
    shown_age: np.ndarray
    users: np.ndarray
    user_clicks: np.ndarray
    user_impressions: np.ndarray
    seconds: float

    @property
    def impressions(self) -> int:
        return int(self.slates.sum()) * self.k

    @property
    def total_clicks(self) -> int:
        """The cumulative reward."""
        return int(self.clicks.sum())

    @property
    def click_rate(self) -> float:
        """Clicks per impression (per shown item)."""
        return self.total_clicks / max(self.impressions, 1)

    @property
    def regret(self) -> float:
        """Expected regret against the oracle, summed over the arm's slates."""
        return float((self.oracle - self.expected).sum())

    def summary(self) -> dict[str, object]:
        slates = max(int(self.slates.sum()), 1)
        return {
            "arm": self.name,
            "policy": self.policy,
            "users": len(self.users),
            "slates": int(self.slates.sum()),
            "impressions": self.impressions,
            "clicks": self.total_clicks,
            "click_rate": self.click_rate,
            "clicks_per_slate": self.total_clicks / slates,
            "expected_clicks": float(self.expected.sum()),
            "oracle_clicks": float(self.oracle.sum()),
            "regret": self.regret,
            "regret_per_slate": self.regret / slates,
            "mean_age_shown": float(self.shown_age.sum()) / max(self.impressions, 1),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline (the first arm).

    Attributes
    ----------
    arm, baseline : str
    test : ProportionTest
        Click rate of ``arm`` minus that of ``baseline``: the unpooled normal interval and the
        pooled two-sided z test, every impression a Bernoulli trial.
    bootstrap_interval : (float, float)
        The same difference's percentile interval from a bootstrap over the arms' users
        (:func:`~lifelong_rec.evaluate.simulate.stats.bootstrap_over_users`).
    relative_lift : float
        ``difference / baseline click rate``.
    """

    arm: str
    baseline: str
    test: ProportionTest
    bootstrap_interval: tuple[float, float]
    relative_lift: float

    def to_dict(self) -> dict[str, object]:
        return {
            "arm": self.arm,
            "baseline": self.baseline,
            "click_rate_difference": self.test.difference,
            "interval": list(self.test.interval),
            "interval_method": "two-proportion normal (Wald), impressions as Bernoulli trials",
            "z": self.test.z,
            "p_value": self.test.p_value,
            "p_value_method": "two-sided pooled two-proportion z test",
            "bootstrap_interval": list(self.bootstrap_interval),
            "bootstrap_method": "percentile bootstrap resampling each arm's users",
            "relative_lift": self.relative_lift,
            "level": self.test.level,
        }


@dataclass(frozen=True, eq=False)
class ABReport:
    """What :func:`ab_test` measured.

    Attributes
    ----------
    config : SimulatorConfig
    rounds, seed, warmup_rounds : int
    model : str
        The recommender every arm starts from.
    arms : tuple of ArmResult
        The first is the baseline.
    comparisons : tuple of Comparison
        Every other arm against the baseline.
    level : float
    seconds : float
    """

    config: SimulatorConfig
    rounds: int
    seed: int
    warmup_rounds: int
    model: str
    arms: tuple[ArmResult, ...]
    comparisons: tuple[Comparison, ...]
    level: float
    seconds: float

    def arm(self, name: str) -> ArmResult:
        for result in self.arms:
            if result.name == name:
                return result
        raise KeyError(f"no arm {name!r}; the arms are {[a.name for a in self.arms]}")

    def to_dict(self, curves: bool = True) -> dict[str, object]:
        """JSON-ready; ``curves`` adds each arm's cumulative clicks and regret per round."""
        out: dict[str, object] = {
            "protocol": "P4",
            "rounds": self.rounds,
            "seed": self.seed,
            "warmup_rounds": self.warmup_rounds,
            "model": self.model,
            "assignment": "stable hash of the user id (FNV-1a + splitmix64, salt = seed) "
            "modulo the number of arms",
            "level": self.level,
            "seconds": round(self.seconds, 1),
            "config": self.config.to_dict(),
            "arms": [arm.summary() for arm in self.arms],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }
        if curves:
            out["curves"] = {
                arm.name: {
                    "cumulative_clicks": np.cumsum(arm.clicks).tolist(),
                    "cumulative_regret": np.cumsum(arm.oracle - arm.expected).tolist(),
                    "cumulative_slates": np.cumsum(arm.slates).tolist(),
                }
                for arm in self.arms
            }
        return out

    def to_markdown(self) -> str:
        """The P4 table: per arm its reward and regret, and its difference to the baseline."""
        from lifelong_rec.evaluate.simulate.report import markdown

        return markdown(self)

    def plot(self, path: str | Path, window: int = 100) -> None:
        """Cumulative clicks, cumulative regret and the rolling click rate, to a PNG."""
        from lifelong_rec.evaluate.simulate.report import plot_curves

        plot_curves(self, path, window=window)


# ------------------------------------------------------------------------------ the harness


def ab_test(
    config: SimulatorConfig,
    policies: Mapping[str, PolicyEntry],
    rounds: int,
    seed: int = 0,
    *,
    warmup_rounds: int = 50,
    model: Callable[[], Recommender] | None = None,
    strategy: str = "naive@block",
    pool: int | None = 100,
    level: float = 0.95,
    n_boot: int = 2_000,
) -> ABReport:
    """Run an A/B test of ``policies`` in one simulated world (see the module docstring).

    Parameters
    ----------
    config : SimulatorConfig
    policies : mapping of arm name to a spec or a factory
        A spec is a :func:`~lifelong_rec.policy.parse_policy` string (``"greedy"``,
        ``"epsilon(epsilon=0.1)"``) or ``"oracle"`` (:class:`OraclePolicy`); a factory is
        called with the simulator and returns a policy. Specs get ``k`` from the config and
        seed ``seed + arm position``. The first arm is the baseline of the comparisons.
    rounds : int
    seed : int
        Seeds the world, the warm-up, the policies, the hash assignment (its salt) and the
        bootstrap.
    warmup_rounds : int
        Rounds of uniform-random slates before the test, the log every model is fitted on.
    model : callable returning a Recommender, optional
        Each arm's model; default ``MatrixFactorization(factors=16, seed=seed)``.
    strategy : str
        How each arm's model follows its clicks (``parse_strategy``), the service's
        ``strategy`` setting: each round's positive events are one block.
    pool : int or None
        How many of the model's top live items each policy chooses from, the items a user
        has clicked left out: the service's ``candidates`` setting (None: every live item).
    level : float
        Confidence level of the intervals.
    n_boot : int
        Resamples of the bootstrap over users.

    Returns
    -------
    ABReport

    Raises
    ------
    ValueError
        For fewer than one policy, a spec that does not parse, or a policy whose ``k`` is not
        the config's.
    """
    started = time.perf_counter()
    if not isinstance(config, SimulatorConfig):
        raise TypeError(f"config must be a SimulatorConfig, not {type(config).__name__}")
    check_positive_ints(rounds=rounds, warmup_rounds=warmup_rounds, n_boot=n_boot)
    if not policies:
        raise ValueError("policies: give at least one arm")
    world = Simulator(config, seed)
    arms = [
        _policy(name, entry, world, config.k, seed + position)
        for position, (name, entry) in enumerate(policies.items())
    ]
    names = [str(name) for name in policies]
    make_model = model or (lambda: MatrixFactorization(factors=16, seed=seed))
    warm_log = _warm_up(world, warmup_rounds, seed)
    strategies = [parse_strategy(strategy, make_model, seed=seed) for _ in arms]
    for follower in strategies:
        follower.warm_up(warm_log)
    arm_of_user = assign_arms(world.user_ids(np.arange(config.n_users)), len(arms), salt=seed)

    series = {key: np.zeros((len(arms), rounds)) for key in
              ("slates", "clicks", "expected", "oracle", "shown_age")}  # fmt: skip
    seconds = np.zeros(len(arms))
    user_clicks = np.zeros(config.n_users)
    user_impressions = np.zeros(config.n_users)
    for t in range(rounds):
        users, candidates = world.arrivals(), world.live_items()
        oracle = world.expected_reward(users, world.oracle_slates(users, candidates))
        timestamp = (warmup_rounds + t) * ROUND_SECONDS
        for index, (policy, follower) in enumerate(zip(arms, strategies, strict=True)):
            rows = np.flatnonzero(arm_of_user[users] == index)
            if len(rows) == 0:
                continue
            begun = time.perf_counter()
            decisions, served, ranks = serve_arm(
                follower.model, policy, world, users[rows], candidates, config.k, pool
            )
            rows = rows[served]
            slates = world.item_indexes(decisions.slates.ravel()).reshape(decisions.slates.shape)
            clicks = world.clicks(users[rows], slates)
            policy.update(decisions, clicks)
            _learn(follower, decisions, clicks, ranks, timestamp)
            seconds[index] += time.perf_counter() - begun
            series["slates"][index, t] = len(rows)
            series["clicks"][index, t] = clicks.sum()
            series["expected"][index, t] = world.expected_reward(users[rows], slates).sum()
            series["oracle"][index, t] = oracle[rows].sum()
            series["shown_age"][index, t] = (world.round_ - world.item_birth_[slates]).sum()
            user_clicks[users[rows]] += clicks.sum(axis=1)  # users of a round are distinct
            user_impressions[users[rows]] += config.k
        world.step()

    results = tuple(
        ArmResult(
            name=name,
            policy=repr(policy),
            k=config.k,
            slates=series["slates"][index].astype(np.int64),
            clicks=series["clicks"][index],
            expected=series["expected"][index],
            oracle=series["oracle"][index],
            shown_age=series["shown_age"][index],
            users=(shown := np.flatnonzero((arm_of_user == index) & (user_impressions > 0))),
            user_clicks=user_clicks[shown],
            user_impressions=user_impressions[shown],
            seconds=float(seconds[index]),
        )
        for index, (name, policy) in enumerate(zip(names, arms, strict=True))
    )
    comparisons = tuple(_compare(results[0], arm, level, n_boot, seed) for arm in results[1:])
    return ABReport(
        config=config,
        rounds=rounds,
        seed=seed,
        warmup_rounds=warmup_rounds,
        model=repr(strategies[0].model),
        arms=results,
        comparisons=comparisons,
        level=level,
        seconds=time.perf_counter() - started,
    )


def serve_arm(
    model: Recommender | None,
    policy: Policy,
    world: Simulator,
    users: np.ndarray,
    candidates: np.ndarray,
    k: int,
    pool: int | None,
) -> tuple[Decisions, np.ndarray, np.ndarray]:
    """One arm's slates for ``users`` (simulator indexes) among the live ``candidates``,
    through :func:`~lifelong_rec.policy.serve`, the service's serving path. The oracle
    chooses among all of them, the items a user has clicked included (its regret is 0).

    Returns
    -------
    decisions : Decisions
    served : array of int64
        Positions in ``users`` of the users that got a slate, in the order of ``decisions``.
    ranks : array of int64, shape (n, k)
        Each shown item's rank in the model's own ranking (0: an item it does not know).
    """
    if model is None:
        raise ValueError("the arm's strategy has no model: warm it up first")
    oracle = isinstance(policy, OraclePolicy)
    decisions, served, _, ranks = serve(
        model, policy, world.user_ids(users), k, pool=None if oracle else pool,
        exclude_seen=not oracle,
        candidates=world.item_ids(candidates), user_features=world.user_features(users),
        item_features=world.item_features(candidates),
    ).joined()  # fmt: skip
    return decisions, served, ranks


def _learn(
    follower: Strategy,
    decisions: Decisions,
    clicks: np.ndarray,
    ranks: np.ndarray,
    timestamp: float,
) -> None:
    """The round's clicks as one block for the arm's strategy, as the service's learner feeds
    its own: only positive events (impressions change no model), with the errors of
    test-then-train (1 where the clicked item was outside the model's own top 10)."""
    events = decisions.to_events(timestamp, clicks)
    positive = np.flatnonzero(events.weight > 0)
    if not len(positive):
        return
    block = events.take(positive)
    errors = ((ranks.ravel() == 0) | (ranks.ravel() > 10)).astype(np.float64)[positive]
    follower.observe(block)
    follower.end_block(block, errors)


def _policy(name: object, entry: PolicyEntry, world: Simulator, k: int, seed: int) -> Policy:
    if isinstance(entry, str):
        policy = (
            OraclePolicy(world, k=k, seed=seed)
            if entry.strip() == "oracle"
            else parse_policy(entry, k=k, seed=seed)
        )
    elif callable(entry):
        policy = entry(world)
        if not isinstance(policy, Policy):
            raise ValueError(f"policies[{name!r}]: the factory returned {type(policy).__name__}")
    else:
        raise ValueError(f"policies[{name!r}]: expected a spec or a factory, got {entry!r}")
    if policy.k != k:
        raise ValueError(f"policies[{name!r}]: k={policy.k}, but the simulator's slates have {k}")
    return policy


def _warm_up(world: Simulator, rounds: int, seed: int) -> EventBatch:
    """``rounds`` rounds of uniform-random slates: the log every arm's model starts from."""
    uniform = UniformRandom(k=world.config.k, seed=seed)
    logs = []
    for t in range(rounds):
        users, candidates = world.arrivals(), world.live_items()
        decisions = uniform.decide(world.user_ids(users), world.item_ids(candidates))
        slates = world.item_indexes(decisions.slates.ravel()).reshape(decisions.slates.shape)
        logs.append(decisions.to_events(t * ROUND_SECONDS, world.clicks(users, slates)))
        world.step()
    return EventBatch.concat(logs)


def _compare(
    baseline: ArmResult, arm: ArmResult, level: float, n_boot: int, seed: int
) -> Comparison:
    test = two_proportion_test(
        baseline.total_clicks, max(baseline.impressions, 1), arm.total_clicks,
        max(arm.impressions, 1), level,
    )  # fmt: skip
    interval = (float("nan"), float("nan"))
    if len(baseline.users) and len(arm.users):
        interval = bootstrap_over_users(
            baseline.user_clicks, baseline.user_impressions, arm.user_clicks,
            arm.user_impressions, n_boot=n_boot, seed=seed, level=level,
        )  # fmt: skip
    rate = baseline.click_rate
    return Comparison(
        arm=arm.name,
        baseline=baseline.name,
        test=test,
        bootstrap_interval=interval,
        relative_lift=test.difference / rate if rate > 0 else float("nan"),
    )
