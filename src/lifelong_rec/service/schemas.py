"""Request and response schemas of the HTTP API (separate models for what comes in and out)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    field_validator,
)

from lifelong_rec.data.cleaning import DEFAULT_KIND_ALIASES
from lifelong_rec.events import KIND_NAMES
from lifelong_rec.events.ids import ID_PATTERN

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 10_000
MAX_TITLE_LENGTH = 1_000
MAX_CATEGORIES = 50
MAX_CONTEXT_KEYS = 32
MAX_KIND_LENGTH = 64
MAX_TIME_TEXT_LENGTH = 64

# An id: no control or invisible characters, no U+FFFD (events.ids.FORBIDDEN_ID_RANGES). A
# path parameter with invalid percent-encoded UTF-8 arrives with U+FFFD in it, and is refused.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
# A JSON number, finite: not a boolean, not text (pydantic's lax mode reads true as 1.0).
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _not_dots(name: str) -> str:
    # "." and ".." are path segments clients remove: /experiments/../stop is sent as /stop
    if not name.strip("."):
        raise ValueError(f"{name!r} is not a name (dots only)")
    return name


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"),
    AfterValidator(_not_dots),
]
# Columns an event has besides its context: a context feature named like one would overwrite
# it when the row is cleaned (a client could forge a user, a policy or a propensity).
RESERVED_CONTEXT = frozenset(
    "user item timestamp kind value weight policy model_version propensity".split()
)


def _not_reserved(name: str) -> str:
    if name in RESERVED_CONTEXT:
        raise ValueError(f"{name!r} is an event column, not a context feature")
    return name


ContextName = Annotated[Name, AfterValidator(_not_reserved)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ events


class EventIn(Strict):
    """One event, checked as a row of a file is (``data.cleaning.clean``): a row that fails
    is rejected with its reason, the other rows of its batch are kept."""

    user: Id
    item: Id
    kind: Annotated[str, StringConstraints(max_length=MAX_KIND_LENGTH)] | None = Field(
        None,
        description=f"one of {', '.join(KIND_NAMES)} (any case), or an alias: "
        f"{', '.join(DEFAULT_KIND_ALIASES)}; view when absent",
    )
    timestamp: (
        FiniteNumber
        | Annotated[str, StringConstraints(min_length=1, max_length=MAX_TIME_TEXT_LENGTH)]
        | None
    ) = Field(
        None,
        description="Unix seconds, or ISO-8601 text (UTC when it names no zone); from 1990 "
        "to a day ahead of the server's clock, which is the time when absent",
    )
    value: FiniteNumber | None = Field(None, description="rating, watch seconds, price...")
    context: dict[ContextName, FiniteNumber] | None = Field(None, max_length=MAX_CONTEXT_KEYS)


class EventsIn(Strict):
    """A batch of events, accepted row by row: the rows that pass are appended together, the
    others are quarantined and listed in the answer's ``rejections``. ``key`` makes a retry
    safe: a batch whose key the log has already seen is not appended (nor quarantined, nor
    counted) again."""

    events: list[EventIn] = Field(min_length=1, description="at most the service's max_batch")
    key: Id | None = None


def _shape(value: object) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "event"


EventsBody = Annotated[
    Annotated[EventsIn, Tag("batch")] | Annotated[EventIn, Tag("event")],
    Discriminator(_shape),
]


def events_body_schema() -> dict[str, Any]:
    """The JSON schema of a ``POST /events`` body, self-contained (definitions inlined).

    The route reads its body itself (the batch size is checked before any row is validated),
    so FastAPI cannot document it from a parameter: the route's ``openapi_extra`` carries this
    schema, where references to ``$defs`` would not resolve.
    """
    schema = TypeAdapter(EventsBody).json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


class Rejection(BaseModel):
    index: int = Field(
        description="position of the event in the request's events (0-based; 0 for a single "
        "event); the quarantine keeps the row under this number as its line"
    )
    field: str = Field(description="the offending field; empty for a whole-row reason")
    reason: str = Field(description="one of lifelong_rec.data.REASONS")
    detail: str


class EventsOut(BaseModel):
    """What became of a batch. A retried key answers as its first attempt did (with
    ``duplicate``), having appended, quarantined and counted nothing again."""

    accepted: int
    rejected: int
    rejections: list[Rejection]
    first_offset: int | None = Field(description="log offset of the first accepted event")
    duplicate: bool = Field(description="the batch key was seen before: nothing appended")


# ------------------------------------------------------------------------------ recommendations


class ReasonOut(BaseModel):
    kind: str
    weight: float
    text: str
    item: str | None


class RecommendedItem(BaseModel):
    item: str
    score: float
    propensity: float
    exploring: bool
    title: str | None = Field(None, description="the catalogue's title; null when it has none")
    categories: list[str] = Field(default_factory=list)
    reasons: list[ReasonOut] | None = None


class RecommendationsOut(BaseModel):
    user: str
    model_version: str
    decision_id: str | None = Field(description="for POST /feedback; null for an empty list")
    policy: str
    experiment: str | None
    arm: str | None
    fallback: bool = Field(description="the user got the cold-start fallback (popularity)")
    method: str | None = Field(None, description="how the explanations split the scores")
    items: list[RecommendedItem]


# ------------------------------------------------------------------------------ feedback


class RewardIn(Strict):
    item: Id
    kind: Literal["click", "cart", "purchase", "watch", "rating"] = "click"
    value: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)


class FeedbackIn(Strict):
    """What the user did with a decision's items; shown items not named count as reward 0.
    One feedback per decision."""

    decision_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    rewards: list[RewardIn] = Field(default_factory=list, max_length=1_000)

    @field_validator("rewards")
    @classmethod
    def _one_per_item(cls, rewards: list[RewardIn]) -> list[RewardIn]:
        # Rewards of one item were summed (a click and a purchase: 2), past the [0, 1] that
        # policies learn from; Thompson sampling then failed after the feedback was stored.
        named = [reward.item for reward in rewards]
        twice = sorted({item for item in named if named.count(item) > 1})
        if twice:
            raise ValueError(f"item {twice[0]!r} is named twice: one reward per shown item")
        return rewards


class FeedbackOut(BaseModel):
    decision_id: str
    rewards: list[float] = Field(description="the reward of each shown item, by position")
    first_offset: int | None


# ------------------------------------------------------------------------------ items


class ItemIn(Strict):
    title: Annotated[str, StringConstraints(max_length=MAX_TITLE_LENGTH)] = ""
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH)] = ""
    categories: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=MAX_CATEGORIES
    )


class ItemOut(BaseModel):
    item: str
    title: str
    text: str
    categories: list[str]
    recommendable: bool = Field(description="the serving model can rank the item now")


class SimilarItem(BaseModel):
    item: str
    score: float
    title: str
    categories: list[str] = Field(default_factory=list)


class SimilarOut(BaseModel):
    item: str
    model_version: str
    items: list[SimilarItem]


# ------------------------------------------------------------------------------ models


class SnapshotOut(BaseModel):
    version: int
    offset: int
    created_at: float
    model: str
    serving: bool


class OnlineOut(BaseModel):
    """Before learning each incoming positive event, the learner asks the serving model for
    the user's top 10 (P1's test-then-train, live; a sample when events come in bulk)."""

    scored: float = Field(description="events scored so far")
    hr_at_10: float = Field(description="share of scored events whose item was in the top 10")
    ndcg_at_10: float
    recent_hr_at_10: float = Field(description="the same, weighted toward recent events")
    recent_ndcg_at_10: float


class ModelsOut(BaseModel):
    serving_version: str | None
    pinned: bool = Field(description="serving stays on an activated snapshot")
    learner_offset: int
    log_end: int
    snapshots: list[SnapshotOut]
    online: dict[str, OnlineOut] = Field(
        default_factory=dict,
        description="test-then-train quality of each serving model (the service's, and "
        "'arm:<spec>' for an experiment arm's) on the events it then learned",
    )


# ------------------------------------------------------------------------------ experiments


class ArmIn(Strict):
    """An arm: a policy (None: the model's own ranking) over a model (None: the service's)."""

    name: Name
    policy: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        None, description="a model spec; the arm gets its own learner over the same log"
    )
    weight: float = Field(1.0, gt=0, le=1e6)


class ExperimentIn(Strict):
    """An A/B test: users split between arms by a stable hash of (experiment, user)."""

    name: Name
    arms: list[ArmIn] = Field(min_length=2, max_length=10)


class ArmResult(BaseModel):
    name: str
    policy: str
    model: str | None
    weight: float
    decisions: int
    impressions: int = Field(description="shown items of decisions with feedback")
    positives: int = Field(description="shown items with a reward > 0")
    reward: float
    rate: float | None = Field(description="positives / impressions")
    difference: float | None = Field(None, description="rate minus the first arm's rate")
    interval: list[float] | None = Field(None, description="95 % interval of the difference")
    p_value: float | None = None


class ExperimentOut(BaseModel):
    name: str
    running: bool
    created_at: float
    stopped_at: float | None
    arms: list[ArmResult]
