"""Model snapshots on disk: immutable, versioned, published atomically.

A snapshot is a folder ``v000042/`` holding the model as ``Recommender.save`` writes it (JSON
and npz, no pickle) and ``snapshot.json``: its version, the log offset it has learned up to
(exclusive), and when it was made. It is written under a temporary name and renamed into
place, so a reader (or a restart after a crash) sees a whole snapshot or none.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lifelong_rec.models import Recommender

_PREFIX = "v"


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot's manifest: ``version``, the log ``offset`` it learned up to (exclusive),
    ``created_at`` (Unix seconds) and the ``model`` it holds (its repr)."""

    version: int
    offset: int
    created_at: float
    model: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SnapshotStore:
    """The snapshot folder. Not thread-safe for writers: one learner writes."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".tmp-*"):  # a write a crash interrupted
            shutil.rmtree(stale, ignore_errors=True)

    def save(self, model: Recommender, version: int, offset: int) -> SnapshotInfo:
        """Write ``model`` as snapshot ``version``, atomically."""
        info = SnapshotInfo(version, offset, time.time(), repr(model))
        final = self._path(version)
        if final.exists():
            raise FileExistsError(f"snapshot {version} exists already")
        temporary = self.folder / f".tmp-{version}-{os.getpid()}"
        model.save(temporary)
        (temporary / "snapshot.json").write_text(json.dumps(info.to_dict()), encoding="utf-8")
        _fsync_tree(temporary)
        os.replace(temporary, final)
        _fsync_dir(self.folder)
        return info

    def list(self) -> list[SnapshotInfo]:
        """Every whole snapshot, oldest first."""
        infos = []
        for path in sorted(self.folder.glob(f"{_PREFIX}[0-9]*")):
            manifest = path / "snapshot.json"
            if manifest.is_file():
                infos.append(SnapshotInfo(**json.loads(manifest.read_text(encoding="utf-8"))))
        return infos

    def newest(self) -> SnapshotInfo | None:
        snapshots = self.list()
        return snapshots[-1] if snapshots else None

    def info(self, version: int) -> SnapshotInfo:
        manifest = self._path(version) / "snapshot.json"
        if not manifest.is_file():
            raise KeyError(f"no snapshot {version}")
        return SnapshotInfo(**json.loads(manifest.read_text(encoding="utf-8")))

    def load(self, version: int) -> tuple[Recommender, SnapshotInfo]:
        info = self.info(version)
        return Recommender.load(self._path(version)), info

    def prune(self, keep: int, protect: set[int] = frozenset()) -> None:
        """Delete all but the newest ``keep`` snapshots (never those in ``protect``)."""
        for info in self.list()[:-keep]:
            if info.version not in protect:
                shutil.rmtree(self._path(info.version), ignore_errors=True)

    def _path(self, version: int) -> Path:
        return self.folder / f"{_PREFIX}{version:06d}"


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
