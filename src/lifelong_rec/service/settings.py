"""The service's settings, in one class: constructor arguments or ``LIFELONG_REC_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What a service runs with. Every field can also be set from the environment as
    ``LIFELONG_REC_<FIELD>`` (e.g. ``LIFELONG_REC_TOKEN``); unknown keys are an error.

    Attributes
    ----------
    db : path
        The SQLite event log (created if missing). Decisions and experiments live there too.
    snapshots : path or None
        Folder of model snapshots; ``<db>.snapshots`` next to the log when None.
    model : str
        The model spec (``parse_model``): "mf", "itemknn", "transformer(epochs=5)", ...
    strategy : str
        How the learner follows the log (``parse_strategy``): "naive@block" learns each new
        batch; "incremental@block" adds replay and a pull toward the last parameters.
    policy : str or None
        The exploration policy that re-ranks the model's candidates (``parse_policy``), e.g.
        "epsilon(epsilon=0.1)"; None serves the model's ranking (logged as "greedy").
    candidates : int
        How many of the model's top items a policy chooses from.
    verb : str
        The verb of history reasons: "watched", "read", "bought", ...
    token : str or None
        The bearer token write endpoints require; None leaves them open (a warning at start).
    publish_seconds : float
        The learner publishes a new serving snapshot at most this often (when it learned
        something since the last one).
    persist_seconds : float
        ... and writes one to disk at most this often (and at shutdown).
    keep_snapshots : int
        Snapshots kept on disk (the oldest go first; the active one is always kept).
    learn_batch : int
        Most events the learner reads from the log per step.
    max_batch : int
        Most events one ``POST /events`` may carry.
    max_body_bytes : int
        Largest request body accepted (413 beyond).
    max_k : int
        Largest list a recommendation request may ask for.
    cors_origins : list of str
        Origins allowed by CORS; empty (the default) adds no CORS headers at all.
    """

    model_config = SettingsConfigDict(env_prefix="LIFELONG_REC_", extra="forbid", frozen=True)

    db: Path = Path("events.db")
    snapshots: Path | None = None
    model: str = "mf"
    strategy: str = "naive@block"
    policy: str | None = None
    candidates: int = Field(100, ge=1, le=10_000)
    verb: str = Field("interacted with", min_length=1)
    token: str | None = Field(None, min_length=8)
    publish_seconds: float = Field(0.2, gt=0)
    persist_seconds: float = Field(30.0, gt=0)
    keep_snapshots: int = Field(5, ge=1)
    learn_batch: int = Field(50_000, ge=1)
    max_batch: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(8_000_000, ge=1_000)
    max_k: int = Field(200, ge=1)
    cors_origins: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _snapshot_folder(self) -> Settings:
        if self.snapshots is None:
            object.__setattr__(self, "snapshots", self.db.with_name(self.db.name + ".snapshots"))
        return self
