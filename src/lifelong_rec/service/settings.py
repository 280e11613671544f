"""The service's settings, in one class: constructor arguments or ``LIFELONG_REC_*`` variables."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifelong_rec.store import is_postgres

ENV_PREFIX = "LIFELONG_REC_"


class Settings(BaseSettings):
    """What a service runs with. Every field can also be set from the environment as
    ``LIFELONG_REC_<FIELD>`` (e.g. ``LIFELONG_REC_TOKEN``); an unknown key, or an unknown
    ``LIFELONG_REC_*`` variable, is an error that names the nearest setting.

    Attributes
    ----------
    db : str
        Where everything durable lives: the path of an SQLite file (created if missing), or a
        PostgreSQL URL ``postgresql://user@host:5432/dbname`` (the ``postgres`` extra).
    db_schema : str
        The PostgreSQL schema of the service's tables ("public"); SQLite has none.
    db_timeout_seconds : float
        PostgreSQL: the longest a request waits for a connection before it is answered 503.
    role : str
        "all" (the default): this process serves and learns. "api" (PostgreSQL only): a
        replica that serves what ``lifelong-rec learn`` processes publish, and learns nothing.
    snapshots : path or None
        Folder of model snapshots of an SQLite log (``<db>.snapshots`` next to it when
        None). A PostgreSQL db keeps its snapshots in the database, where every replica reads
        them.
    model : str
        The model spec (``parse_model``): "auto" (the default: the online ensemble of
        popularity, session item-kNN, session MF and MF, which also ranks the catalogue's never-seen
        items), "ensemble" (the same without them), "mf", "itemknn", "transformer(epochs=5)", ...
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
        The bearer token write endpoints require (at least 8 characters, no surrounding
        white space); None leaves them open, which ``lifelong-rec serve`` allows on a loopback
        address only, unless ``allow_open_writes`` (a warning at start either way).
    allow_open_writes : bool
        Serve write endpoints without a token on an address other than loopback: anyone who
        can reach the service can then write events, items, experiments and models.
    publish_seconds : float
        The learner publishes a new serving snapshot at most this often (when it learned
        something since the last one).
    persist_seconds : float
        ... and writes one to disk at most this often (and at shutdown).
    keep_snapshots : int
        Snapshots kept on disk (the oldest go first; the active one is always kept).
    trained_poll_seconds : float or None
        With ``lifelong-rec train`` publishing into this service's snapshot store: how often
        the learner looks for the trainer's snapshots and adopts their networks while it keeps
        learning every event (the transformer; see :mod:`lifelong_rec.service.learner`).
        None (the default): no trainer.
    blas_threads : int or None
        Threads each BLAS call (numpy's matrix products) may use in this process: 1 by
        default. A service answers many requests at once beside its learner, and a BLAS call
        that spreads over every core then waits for cores the others hold: on the 2-core
        development machine, loaded by other jobs, MF over 10,000 items answered 155-163
        requests/s with OpenBLAS's 2 threads and 797-809 with 1 (bench/service_load.py).
        None: the libraries' own default (every core).
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
    rewards : str
        The reward preset that turns feedback into a policy's reward (``reward_spec``):
        "ecommerce", "news" or "video".
    explain_seconds : float
        Reasons for a list are computed within this time, or the list is served without.
    log_rate, log_burst : float
        Logged reads a second, and at once, of each client without a valid token: beyond
        them its lists are served but not logged.
    header_timeout_seconds : float
        A request's line and headers must arrive within this time of its first byte (of the
        connection's opening, for its first request); the connection is closed otherwise.
    body_timeout_seconds : float
        A request's whole body must arrive within this time of its headers (408 otherwise).
    keep_alive_seconds : int
        An idle keep-alive connection is closed after this time.
    max_connections : int
        Connections (or requests in progress) served at once; 503 beyond.
    max_header_bytes : int
        Largest request line and headers accepted; the connection is closed beyond.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # an error message must not print the token
    )

    db: str = "events.db"
    db_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    db_timeout_seconds: float = Field(default=5.0, gt=0)
    role: Literal["all", "api"] = "all"
    snapshots: Path | None = None
    model: str = "auto"
    strategy: str = "naive@block"
    policy: str | None = None
    candidates: int = Field(default=100, ge=1, le=10_000)
    verb: str = Field(default="interacted with", min_length=1)
    token: str | None = Field(default=None, min_length=8, repr=False)
    allow_open_writes: bool = False
    publish_seconds: float = Field(default=0.2, gt=0)
    persist_seconds: float = Field(default=30.0, gt=0)
    keep_snapshots: int = Field(default=5, ge=1)
    trained_poll_seconds: float | None = Field(default=None, gt=0)
    blas_threads: int | None = Field(default=1, ge=1)
    learn_batch: int = Field(default=50_000, ge=1)
    max_batch: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=8_000_000, ge=1_000)
    max_k: int = Field(default=200, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    rewards: str = "ecommerce"
    explain_seconds: float = Field(default=1.0, gt=0)
    log_rate: float = Field(default=10.0, gt=0)
    log_burst: float = Field(default=100.0, ge=1)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    keep_alive_seconds: int = Field(default=5, ge=1)
    max_connections: int = Field(default=1_000, ge=2)
    max_header_bytes: int = Field(default=65_536, ge=1_024)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, values: Any) -> Any:
        # The environment source reads only the variables named like a field: without this,
        # LIFELONG_REC_TOKN=secret started a service with every write endpoint open.
        reject_unknown_variables(os.environ, cls.model_fields)
        return values

    @field_validator("db", mode="before")
    @classmethod
    def _db_text(cls, db: object) -> object:
        return os.fspath(db) if isinstance(db, os.PathLike) else db

    @field_validator("token")
    @classmethod
    def _token_is_a_word(cls, token: str | None) -> str | None:
        if token is not None and token.strip() != token:
            # an HTTP header value loses surrounding white space: no request could match
            raise ValueError(
                "the token has white space around it" if token.strip() else "the token is blank"
            )
        return token

    @model_validator(mode="after")
    def _snapshot_folder(self) -> Settings:
        if not is_postgres(self.db) and self.db_schema != "public":
            raise ValueError("db_schema: a schema is for a PostgreSQL db, not an SQLite file")
        if is_postgres(self.db):
            if self.snapshots is not None:
                raise ValueError(
                    "snapshots: a PostgreSQL db keeps its snapshots in the database (every "
                    "replica reads them there); leave the snapshot folder unset"
                )
            return self
        if self.role != "all":
            raise ValueError(
                "role: an API replica follows learners through PostgreSQL; with an SQLite db "
                "one process serves and learns (role all)"
            )
        if self.snapshots is None:
            folder = Path(self.db)
            object.__setattr__(self, "snapshots", folder.with_name(folder.name + ".snapshots"))
        return self

    def check_exposure(self, host: str) -> None:
        """Refuse to serve writes without a token on ``host`` unless it is a loopback address
        or ``allow_open_writes`` says so.

        Raises
        ------
        ValueError
            Saying what to set.
        """
        if self.token is not None or self.allow_open_writes or is_loopback(host):
            return
        raise ValueError(
            f"{host} is not a loopback address and no token is set: anyone who can reach the "
            f"service could write to it; set {ENV_PREFIX}TOKEN (8 characters or more), or "
            f"{ENV_PREFIX}ALLOW_OPEN_WRITES=true to serve open writes on purpose"
        )


#: The project's variables that are not the service's settings: where the real data sets are,
#: the test suite's PostgreSQL server, and whether its browser tests may skip. A service must
#: start with them set.
OTHER_VARIABLES = frozenset(
    ENV_PREFIX + name
    for name in ("DATASETS", "TEST_POSTGRES", "REQUIRE_POSTGRES", "REQUIRE_BROWSER")
)


def reject_unknown_variables(environ: Mapping[str, str], fields: Mapping[str, object]) -> None:
    """Raise a ValueError naming the first ``LIFELONG_REC_*`` variable of ``environ`` that is
    no field of ``fields`` (nor one of :data:`OTHER_VARIABLES`), and the nearest one that is.

    Examples
    --------
    >>> reject_unknown_variables({"LIFELONG_REC_TOKN": "x"}, {"token": None, "db": None})
    Traceback (most recent call last):
    ...
    ValueError: LIFELONG_REC_TOKN is not a setting; did you mean LIFELONG_REC_TOKEN?
    >>> reject_unknown_variables({"LIFELONG_REC_DATASETS": "/data"}, {"token": None})
    """
    known = sorted(name.upper() for name in fields)
    for variable in sorted(environ):
        name = variable.upper()  # pydantic-settings reads the variables case-insensitively
        if (
            not name.startswith(ENV_PREFIX)
            or name.removeprefix(ENV_PREFIX) in known
            or name in OTHER_VARIABLES
        ):
            continue
        nearest = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), known, n=1)
        hint = (
            f"did you mean {ENV_PREFIX}{nearest[0]}?"
            if nearest
            else f"the settings are {', '.join(ENV_PREFIX + field for field in known)}"
        )
        raise ValueError(f"{variable} is not a setting; {hint}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or "localhost".

    Examples
    --------
    >>> [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")]
    [True, True, True, True, True]
    >>> [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "")]
    [False, False, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name: it may resolve to any address
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
