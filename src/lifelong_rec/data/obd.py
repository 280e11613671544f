"""The Open Bandit Dataset (ZOZOTOWN): logged bandit feedback with propensities.

Each row of an OBD csv is one logged decision: at ``timestamp`` the behaviour policy showed
``item_id`` at ``position`` (1-3) with probability ``propensity_score``, and the user clicked
(``click`` = 1) or not. It becomes one event:

- kind ``click`` when clicked, else ``impression``; value = the click (1.0 or 0.0), so the
  reward of every logged decision is in ``value``;
- propensity = ``propensity_score``; policy = the behaviour policy (the folder name ``random``
  or ``bts`` when the path follows the data set's layout, else ``behavior``);
- context = ``position``, the four hashed ``user_feature_*`` columns and the
  ``user-item_affinity_*`` columns;
- user = a stable 16-hex-digit hash of the four user features: OBD has no user ids, and
  identical feature vectors are the closest thing to one user that the data has.

The sibling ``item_context.csv`` becomes the catalog: ``item_feature_1..3`` (hashed
categories) as categories, ``item_feature_0`` as a numeric attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lifelong_rec.data.cleaning import as_text
from lifelong_rec.data.errors import InputError
from lifelong_rec.data.tables import RawTable, read_csv
from lifelong_rec.events import Catalog

REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
POLICIES = ("random", "bts")


def find_log(path: Path) -> Path:
    """The log csv: ``path`` itself, or the one csv beside item_context.csv in a folder."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError("no such file or folder", path=path)
    logs = sorted(p for p in path.glob("*.csv") if p.name != "item_context.csv")
    if len(logs) != 1:
        raise InputError(
            f"expected one OBD log csv besides item_context.csv, found {len(logs)}", path=path
        )
    return logs[0]


def read_obd(path: str | Path, behavior: str | None = None) -> tuple[RawTable, Catalog]:
    """Raw decision rows and the item catalog of an OBD log (file, or its campaign folder)."""
    log = find_log(Path(path))
    frame, lines, malformed = read_csv(log, delimiter=",")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame]
    if missing:
        raise InputError(
            f"not an Open Bandit Dataset log: missing columns {', '.join(missing)}", path=log
        )
    if behavior is None:
        behavior = next((p for p in (log.parent.parent.name,) if p in POLICIES), "behavior")
    columns = [str(c) for c in frame.columns]  # read_csv's names, str already
    user_features = sorted(c for c in columns if c.startswith("user_feature_"))
    affinities = sorted(
        (c for c in columns if c.startswith("user-item_affinity_")),
        key=lambda c: int(c.rsplit("_", 1)[1]),
    )
    click = frame["click"]
    events = pd.DataFrame(
        {
            "user": _user_ids(frame[user_features]) if user_features else "",
            "item": frame["item_id"],
            "timestamp": frame["timestamp"],
            "kind": np.where(click.str.strip() == "1", "click", "impression"),
            "value": click,
            "propensity": frame["propensity_score"],
            "policy": behavior,
            "position": frame["position"],
        }
        | {name: frame[name] for name in (*user_features, *affinities)}
    )
    table = RawTable(
        frame=events,
        lines=lines,
        source=np.full(len(events), str(log)),
        context_columns=("position", *user_features, *affinities),
        malformed=malformed,
    )
    return table, _catalog(log.parent / "item_context.csv")


def _user_ids(features: pd.DataFrame) -> np.ndarray:
    hashes = pd.util.hash_pandas_object(features, index=False).to_numpy(dtype=np.uint64)
    return np.char.add("u", np.char.zfill(np.char.mod("%x", hashes), 16))


def _catalog(path: Path) -> Catalog:
    if not path.is_file():
        return Catalog.empty()
    frame, _, _ = read_csv(path, delimiter=",")
    if "item_id" not in frame:
        raise InputError("item_context.csv has no item_id column", path=path)
    columns = [str(c) for c in frame.columns]  # read_csv's names, str already
    categories = sorted(
        c for c in columns if c.startswith("item_feature_") and c != "item_feature_0"
    )
    numeric = pd.to_numeric(frame.get("item_feature_0", pd.Series(dtype=str)), errors="coerce")
    return Catalog(
        item=as_text(frame["item_id"]),
        title=np.full(len(frame), "", dtype=str),
        text=np.full(len(frame), "", dtype=str),
        categories=tuple(
            map(tuple, frame[categories].to_numpy(dtype=object, na_value="").astype(str).tolist())
        ),
        attributes=tuple(
            {"item_feature_0": float(v)} if np.isfinite(v) else {}
            for v in numeric.reindex(frame.index).to_numpy(dtype=np.float64)
        ),
    )
