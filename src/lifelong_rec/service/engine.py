"""What the HTTP routes drive: ingestion, serving, feedback, the catalogue and experiments.

The engine owns the event log connection the API writes through, the background learner, the
decision store, the experiments and the metrics. Routes stay thin: they validate requests and
shape responses; everything with state happens here.
"""

from __future__ import annotations

import gc
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lifelong_rec.data import clean
from lifelong_rec.events import Catalog, EventBatch, EventWeights, kind_codes
from lifelong_rec.explain import explain_decisions
from lifelong_rec.models import Wording, parse_model, with_catalog
from lifelong_rec.policy import Decisions, Greedy, Policy, parse_policy
from lifelong_rec.service.decisions import DecisionStore, Served, rewards_matrix
from lifelong_rec.service.errors import Conflict, NotFound, NotReady
from lifelong_rec.service.experiments import Arm, Experiment, Experiments
from lifelong_rec.service.learner import Learner, Snapshot
from lifelong_rec.service.metrics import Metrics
from lifelong_rec.service.settings import Settings
from lifelong_rec.service.snapshots import SnapshotStore
from lifelong_rec.store import EventLog

log = logging.getLogger("lifelong_rec.service")

WATCH_CAP_SECONDS = 600.0
REWARD_OF_KIND = {"click": 1.0, "cart": 0.3, "purchase": 1.0}  # watch and rating: by value


@dataclass(frozen=True)
class Ingested:
    accepted: int
    rejections: list[dict[str, object]]
    first_offset: int | None
    duplicate: bool


class Engine:
    """The service's state. ``start`` restores and starts learning; ``stop`` persists."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.log = EventLog(settings.db)
        self.default_policy = self._make_policy(settings.policy)
        self.learner = self._new_learner(settings.model, settings.snapshots, self._published)
        self.arm_learners: dict[str, Learner] = {}  # model spec of an experiment arm -> learner
        self.decisions = DecisionStore(settings.db)
        self.experiments = Experiments(settings.db, self._make_policy)
        self._wording: Wording | None = None

    def start(self) -> None:
        if self.settings.token is None:
            log.warning(
                "no token is set: anyone who can reach the service can write to it "
                "(set LIFELONG_REC_TOKEN)"
            )
        self.learner.start()
        if self.experiments.running is not None:
            self._arm_models(self.experiments.running)
        # What is loaded by now (modules, the app, the restored model) lives as long as the
        # service: frozen, it is out of the collector's sight. A full collection walked its
        # ~300,000 objects and stalled every request in flight for 100-200 ms.
        gc.collect()
        gc.freeze()

    def stop(self) -> None:
        gc.unfreeze()
        self.learner.stop()
        for learner in self.arm_learners.values():
            learner.stop()
        self.decisions.close()
        self.experiments.close()
        self.log.close()

    # -------------------------------------------------------------- events

    def ingest(self, rows: list[dict[str, object]], key: str | None) -> Ingested:
        """Clean, then append durably; rejected rows go to the quarantine with their reason."""
        now = time.time()
        frame = pd.DataFrame(
            {
                "user": [row["user"] for row in rows],
                "item": [row["item"] for row in rows],
                "timestamp": [
                    now if row.get("timestamp") is None else row["timestamp"] for row in rows
                ],
                "kind": [row.get("kind") or "view" for row in rows],
                "value": [np.nan if row.get("value") is None else row["value"] for row in rows],
            }
        )
        contexts = sorted({name for row in rows for name in (row.get("context") or {})})
        for name in contexts:
            frame[name] = [(row.get("context") or {}).get(name, np.nan) for row in rows]
        cleaned = clean(frame, source="http", context_columns=contexts, name="POST /events")
        appended = None
        if len(cleaned.events):
            appended = self.log.append(cleaned.events, key=key, source="http")
            if not appended.duplicate:
                self.metrics.events.inc(len(cleaned.events))
            self.learner.wake()
        if len(cleaned.rejected) and not (appended and appended.duplicate):
            self.log.quarantine(cleaned.rejected)  # once per batch key, like the events
        rejections = [
            {"index": int(line) - 1, "field": field or "", "reason": reason, "detail": detail}
            for line, reason, field, detail in zip(
                cleaned.rejected.line,
                cleaned.rejected.reason,
                cleaned.rejected.field,
                cleaned.rejected.detail,
                strict=True,
            )
        ]
        for rejection in rejections:
            self.metrics.rejected.labels(rejection["reason"]).inc()
        return Ingested(
            accepted=len(cleaned.events),
            rejections=rejections,
            first_offset=None if appended is None else appended.first_offset,
            duplicate=bool(appended and appended.duplicate),
        )

    # -------------------------------------------------------------- serving

    def snapshot(self, model: str | None = None) -> Snapshot:
        """The serving snapshot of the service's model, or of an experiment arm's ``model``."""
        learner = self.learner if model is None else self.arm_learners[model]
        snapshot = learner.current
        if snapshot.model is None:
            what = "the model" if model is None else f"the arm's model {model!r}"
            raise NotReady(f"no model yet: {what} has learned nothing yet (or is catching up)")
        return snapshot

    def recommend(self, user: str, k: int, explain: bool) -> dict[str, object]:
        """The user's slate: the model's candidates, re-ranked by the user's policy (their
        experiment arm's, or the default one), logged with propensities."""
        assignment = self.experiments.assign(user)
        experiment = arm = arm_model = None
        policy = self.default_policy
        if assignment is not None and self._arms_ready(assignment[0]):
            running, index = assignment
            experiment, arm = running.name, running.arms[index].name
            policy = self.experiments.policies[index]
            arm_model = running.arms[index].model
        snapshot = self.snapshot(arm_model)
        model = snapshot.model
        pool = k if isinstance(policy, Greedy) else max(k, self.settings.candidates)
        ranked = model.recommend([user], k=pool)
        listed = ranked.items[0] != ""
        candidates, scores = ranked.items[0][listed], ranked.scores[0][listed]
        decision_id = uuid.uuid4().hex
        result = {
            "user": user,
            "model_version": snapshot.name,
            "decision_id": decision_id,
            "policy": policy.name,
            "experiment": experiment,
            "arm": arm,
            "fallback": bool(ranked.fallback[0]),
            "method": None,
            "items": [],
        }
        if not len(candidates):  # nothing to show (an empty catalogue): no decision to log
            result["decision_id"] = None
            return result
        if type(policy) is Greedy and policy.uniform_share == 0:
            decisions = _model_ranking(policy, user, candidates[:k], snapshot.name)
        else:
            policy.k = min(k, len(candidates))  # the slate length of this request
            decisions = policy.decide(
                [user], candidates, scores[None, :].astype(np.float64), model_version=snapshot.name
            )
        self.decisions.add(Served(decision_id, decisions, experiment, arm, time.time()))
        self.metrics.count_decision(experiment or "", arm or "", policy.name)
        score_of = dict(zip(candidates.tolist(), scores.tolist(), strict=True))
        explained = None
        if explain:
            (explained,) = explain_decisions(model, decisions, top=3, wording=self.wording())
            result["method"] = explained[0].method if explained else None
        for position, item in enumerate(decisions.slates[0].tolist()):
            entry = {
                "item": item,
                "score": score_of[item],
                "propensity": float(decisions.propensities[0, position]),
                "exploring": bool(decisions.exploring[0, position]),
            }
            if explained is not None:
                entry["reasons"] = [
                    {"kind": r.kind, "weight": r.weight, "text": r.text, "item": r.item}
                    for r in explained[position].reasons
                ]
            result["items"].append(entry)
        return result

    def feedback(self, decision_id: str, rewards: list[dict[str, object]]) -> dict[str, object]:
        """Rewards for a decision's shown items (the others count as 0), once per decision:
        appended to the log as events, and learned by the policy that decided."""
        served = self.decisions.get(decision_id)
        if served is None:
            raise NotFound(f"decision {decision_id!r} is unknown")
        slate = served.decisions.slates[0].tolist()
        rewarded: dict[str, float] = {}
        for reward in rewards:
            if reward["item"] not in slate:
                raise ValueError(f"rewards: item {reward['item']!r} was not shown in this decision")
            rewarded[reward["item"]] = rewarded.get(reward["item"], 0.0) + _reward(reward)
        matrix = rewards_matrix(served, rewarded)
        if not self.decisions.settle(served, matrix[0].tolist()):
            raise Conflict(f"decision {decision_id!r} has feedback already")
        appended = None
        if rewards:
            appended = self.log.append(self._reward_events(served, rewards), source="feedback")
            self.learner.wake()
        policy = self._policy_of(served)
        if policy is not None:
            try:  # the feedback is stored and logged: a policy that fails must not undo it
                policy.update(served.decisions, matrix)
            except Exception:
                log.exception(
                    "policy %s could not learn from decision %s", policy.name, decision_id
                )
        labels = (served.experiment or "", served.arm or "", served.decisions.policy)
        self.metrics.reward.labels(*labels).inc(float(matrix.sum()))
        return {
            "decision_id": decision_id,
            "rewards": matrix[0].tolist(),
            "first_offset": None if appended is None else appended.first_offset,
        }

    def _reward_events(self, served: Served, rewards: list[dict[str, object]]) -> EventBatch:
        d = served.decisions
        position = {item: p for p, item in enumerate(d.slates[0].tolist())}
        kinds = kind_codes(np.array([r["kind"] for r in rewards])).astype(np.uint8)
        values = np.array([np.nan if r.get("value") is None else r["value"] for r in rewards])
        rows = [position[r["item"]] for r in rewards]
        return EventBatch(
            user=np.full(len(rewards), d.users[0]),
            item=np.array([r["item"] for r in rewards]),
            timestamp=np.full(len(rewards), time.time()),
            kind=kinds,
            value=values,
            weight=EventWeights().weights(kinds, values),
            policy=np.full(len(rewards), d.policy),
            model_version=np.full(len(rewards), d.model_version or ""),
            propensity=d.propensities[0, rows],
            context={"position": np.array(rows, dtype=np.float64) + 1},
        )

    def _policy_of(self, served: Served) -> Policy | None:
        """The policy object that made a decision, if it is still live."""
        running = self.experiments.running
        if served.experiment is None:
            return self.default_policy
        if running is not None and running.name == served.experiment:
            names = [arm.name for arm in running.arms]
            return self.experiments.policies[names.index(served.arm)]
        return None  # an experiment that has stopped: its policies are gone

    # -------------------------------------------------------------- catalogue

    def put_item(self, item: str, title: str, text: str, categories: list[str]) -> bool:
        """Add or replace an item's metadata; True when the serving model can rank it."""
        catalog = Catalog.from_records(
            [{"item": item, "title": title, "text": text, "categories": categories}]
        )
        self.log.upsert_catalog(catalog)
        self._wording = None
        self.learner.add_items(catalog)
        model = self.learner.current.model
        if model is not None and getattr(model, "text_encoder", None):
            deadline = time.monotonic() + 2.0  # a text model ranks it after the next publish
            while time.monotonic() < deadline and not self.knows(item):
                time.sleep(0.01)
        return self.knows(item)

    def knows(self, item: str) -> bool:
        model = self.learner.current.model
        return model is not None and model.items_.lookup([item])[0] >= 0

    def item(self, item: str) -> dict[str, object]:
        catalog = self.wording().catalog  # the log's catalogue, read once per change
        rows = np.flatnonzero(catalog.item == item)
        if not len(rows) and not self.knows(item):
            raise NotFound(f"item {item!r} is unknown")
        row = int(rows[0]) if len(rows) else None
        return {
            "item": item,
            "title": "" if row is None else str(catalog.title[row]),
            "text": "" if row is None else str(catalog.text[row]),
            "categories": [] if row is None else list(catalog.categories[row]),
            "recommendable": self.knows(item),
        }

    def similar(self, item: str, k: int) -> dict[str, object]:
        snapshot = self.snapshot()
        if not self.knows(item):
            raise NotFound(f"item {item!r} is unknown to the serving model")
        similar = snapshot.model.similar_items(item, k)
        titles = self.wording().titles([name for name, _ in similar]) if similar else []
        return {
            "item": item,
            "model_version": snapshot.name,
            "items": [
                {"item": name, "score": score, "title": str(title)}
                for (name, score), title in zip(similar, titles, strict=True)
            ],
        }

    def wording(self) -> Wording:
        """Titles and categories from the log's catalogue, rebuilt after it changes."""
        if self._wording is None:
            self._wording = Wording(self.log.catalog(), self.settings.verb)
        return self._wording

    # -------------------------------------------------------------- models and experiments

    def models(self) -> dict[str, object]:
        serving = self.learner.current
        return {
            "serving_version": serving.name,
            "pinned": self.learner.pinned,
            "learner_offset": self.learner.offset,
            "log_end": self.log.end_offset,
            "snapshots": [
                info.to_dict() | {"serving": info.version == serving.version}
                for info in self.learner.store.list()
            ],
        }

    def activate(self, version: str) -> dict[str, object]:
        if version == "latest":
            self.learner.activate(None)
        else:
            if not version.isdigit():
                raise ValueError(f"version: {version!r} is neither a number nor 'latest'")
            try:
                self.learner.activate(int(version))
            except KeyError:
                raise NotFound(f"no snapshot {version}") from None
        return self.models()

    def create_experiment(self, name: str, arms: list[dict[str, object]]) -> None:
        """Start an A/B test between policies, models, or both. An arm with its own model gets
        its own learner over the same log (its snapshots in a folder of their own); the test
        starts counting once every such learner has published (see ``_arms_ready``)."""
        arms = [
            Arm(a["name"], a.get("policy") or "greedy", float(a.get("weight", 1.0)),
                a.get("model"))
            for a in arms
        ]  # fmt: skip
        try:
            experiment = self.experiments.create(name, arms)
        except RuntimeError as error:
            raise Conflict(str(error)) from None
        self._arm_models(experiment)

    def stop_experiment(self, name: str) -> Experiment:
        try:
            experiment = self.experiments.stop(name)
        except KeyError as error:
            raise NotFound(str(error.args[0])) from None
        for spec in {arm.model for arm in experiment.arms if arm.model}:
            self.arm_learners.pop(spec).stop()  # its snapshots stay on disk for a later test
        return experiment

    def _arms_ready(self, experiment: Experiment) -> bool:
        """Whether every model an arm names has a learner that has published. Until then the
        experiment counts nobody and everyone gets the default policy and model: the arms
        start together, and no request waits for an arm's model to learn the log."""
        learners = [self.arm_learners.get(arm.model) for arm in experiment.arms if arm.model]
        return all(learner is not None and learner.current.model for learner in learners)

    def _arm_models(self, experiment: Experiment) -> None:
        """A learner for every model an arm names (the service's own model included: an arm
        that names it still learns apart, so the arms stay comparable)."""
        for spec in {arm.model for arm in experiment.arms if arm.model}:
            if spec not in self.arm_learners:
                folder = self.settings.snapshots / "arms" / re.sub(r"[^A-Za-z0-9]+", "-", spec)
                learner = self._new_learner(spec, folder, None)
                learner.start()
                self.arm_learners[spec] = learner

    def _new_learner(self, spec: str, folder: Path, on_publish: object) -> Learner:
        _, factory = parse_model(spec)
        settings = self.settings
        return Learner(
            db=str(settings.db),
            store=SnapshotStore(folder),
            # The catalogue as it is when a model is made (a text model reads it).
            factory=lambda: with_catalog(factory, self.log.catalog())(),
            strategy=settings.strategy,
            publish_seconds=settings.publish_seconds,
            persist_seconds=settings.persist_seconds,
            learn_batch=settings.learn_batch,
            keep_snapshots=settings.keep_snapshots,
            on_publish=on_publish,
        )

    def _make_policy(self, spec: str | None) -> Policy:
        return Greedy(k=1) if spec is None else parse_policy(spec, k=1)

    def _published(self, snapshot: Snapshot) -> None:
        self.metrics.version.set(snapshot.version)


def _model_ranking(policy: Greedy, user: str, slate: np.ndarray, version: str) -> Decisions:
    """What ``policy.decide`` returns for candidates already in score order (the model's
    ranking): the first ``k``, each with propensity 1, none exploring. Built directly: the
    general ``decide`` costs about a fifth of a plain request."""
    return Decisions(
        users=[user],
        slates=slate[None, :],
        propensities=np.ones((1, len(slate))),
        policy=policy.name,
        params=policy.get_params() | {"k": len(slate)},
        model_version=version,
        explored=[False],
    )


def _reward(reward: dict[str, object]) -> float:
    """A reward in [0, 1] from what the user did: click 1, cart 0.3, purchase 1; watch
    seconds over a 10-minute cap; a rating over 5."""
    kind, value = reward["kind"], reward.get("value")
    if kind == "watch":
        return min(float(value or 0.0), WATCH_CAP_SECONDS) / WATCH_CAP_SECONDS
    if kind == "rating":
        return min(max(float(value or 0.0) / 5.0, 0.0), 1.0)
    return REWARD_OF_KIND[kind]
