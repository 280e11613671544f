"""Model snapshots on disk: immutable, versioned, published atomically.

A snapshot is a folder ``v000042/`` holding the model as ``Recommender.save`` writes it (JSON
and npz, no pickle), the live policies as each ``Policy.save`` writes it under
``policies/<name>/`` (when the learner was given them), and ``snapshot.json``: its version,
the log offset it has learned up to (exclusive), and when it was made. It is written under a
temporary name unique to the write (``.tmp-<version>-<uuid>-<pid>``) and renamed into place, so
a reader (or a restart after a crash) sees a whole snapshot or none. ``pin.json`` names the
version serving is pinned to (a rollback), replaced atomically.

Reading a snapshot raises ``KeyError`` when it is not there (or is deleted while it is read)
and :class:`DamagedSnapshot` when it is there but cannot be read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lifelong_rec.models import Recommender

if TYPE_CHECKING:
    from lifelong_rec.policy import Policy

log = logging.getLogger("lifelong_rec.service")

_PREFIX = "v"
_VERSION_FOLDER = re.compile(rf"{_PREFIX}(\d{{6,}})")
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PIN_FILE = "pin.json"
PIN_FORMAT_VERSION = 1
POLICIES_FOLDER = "policies"


class DamagedSnapshot(Exception):
    """A snapshot folder is there but cannot be read: a truncated npz, JSON that is missing or
    does not parse, a model or a policy that fails to load.

    Attributes
    ----------
    version : int
    reason : str
    """

    def __init__(self, version: int, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(f"snapshot {version} is damaged: {reason}")


class SavesItself(Protocol):
    """What a snapshot stores beside its model: anything with ``save(folder)`` (a policy)."""

    def save(self, folder: Path) -> None: ...


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
    """The snapshot folder. One learner writes it; any thread may read it.

    Writes in progress are told apart by a unique temporary name, so two stores of one
    process never write into the same temporary folder. The constructor removes what
    interrupted writes of other processes left behind (a crash); those of this process may
    be in progress and stay.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        own = f"-{os.getpid()}"
        for stale in [*self.folder.glob(".tmp-*"), *self.folder.glob(".trash-*")]:
            if not stale.name.endswith(own):  # a write a crash interrupted
                _remove(stale)

    # -------------------------------------------------------------- writing

    def save(
        self,
        model: Recommender,
        version: int,
        offset: int,
        policies: Mapping[str, SavesItself] | None = None,
    ) -> SnapshotInfo:
        """Write ``model`` (and ``policies``, each into ``policies/<name>/``) as snapshot
        ``version``, atomically.

        Raises
        ------
        ValueError
            If a policy name is not a safe folder name (letters, digits, ``_ . -``, not
            starting with a dot).
        FileExistsError
            If snapshot ``version`` exists already.
        """
        policies = dict(policies or {})
        for name in policies:
            _check_policy_name(name)
        info = SnapshotInfo(version, offset, time.time(), repr(model))
        final = self._path(version)
        if final.exists():
            raise FileExistsError(f"snapshot {version} exists already")
        temporary = self.folder / f".tmp-{version}-{uuid.uuid4().hex}-{os.getpid()}"
        try:
            model.save(temporary)
            for name, policy in policies.items():
                policy.save(temporary / POLICIES_FOLDER / name)
            (temporary / "snapshot.json").write_text(json.dumps(info.to_dict()), encoding="utf-8")
            _fsync_tree(temporary)
            try:
                os.replace(temporary, final)
            except OSError as error:  # another writer renamed its own into place first
                if final.exists():
                    raise FileExistsError(f"snapshot {version} exists already") from error
                raise
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        _fsync_dir(self.folder)
        return info

    def prune(self, keep: int, protect: set[int] | frozenset[int] = frozenset()) -> None:
        """Delete all but the newest ``keep`` snapshot folders (damaged ones count), never
        those in ``protect`` nor the pinned one.

        Each is first renamed out of sight, then deleted: a concurrent :meth:`load` of it
        finds it whole or not at all (``KeyError``), never half deleted.
        """
        protected = set(protect)
        pinned = self.read_pin()
        if pinned is not None:
            protected.add(pinned)
        versions = self.versions()
        for version in versions[: max(0, len(versions) - keep)]:
            if version in protected:
                continue
            trash = self.folder / f".trash-{uuid.uuid4().hex}-{os.getpid()}"
            try:
                os.replace(self._path(version), trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)

    def write_pin(self, version: int | None) -> None:
        """Persist the version serving is pinned to; None removes the pin. Atomic and durable:
        a crash leaves the old pin or the new one."""
        path = self.folder / PIN_FILE
        if version is None:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            _fsync_dir(self.folder)
            return
        payload = json.dumps({"format_version": PIN_FORMAT_VERSION, "version": int(version)})
        temporary = self.folder / f".tmp-pin-{uuid.uuid4().hex}-{os.getpid()}"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)

    # -------------------------------------------------------------- reading

    def read_pin(self) -> int | None:
        """The pinned version, or None; an unreadable pin file is logged and read as None."""
        path = self.folder / PIN_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("%s cannot be read (%s): serving follows the newest model", path, error)
            return None
        version = payload.get("version") if isinstance(payload, dict) else None
        if (
            not isinstance(payload, dict)
            or payload.get("format_version") != PIN_FORMAT_VERSION
            or not isinstance(version, int)
        ):
            log.warning("%s is not a pin (%r): serving follows the newest model", path, payload)
            return None
        return version

    def versions(self) -> list[int]:
        """The version of every snapshot folder, whole or damaged, oldest first."""
        found = []
        for path in self.folder.iterdir():
            match = _VERSION_FOLDER.fullmatch(path.name)
            if match and path.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot whose manifest reads, oldest first (damaged ones left out)."""
        infos = []
        for version in self.versions():
            try:
                infos.append(self.info(version))
            except (KeyError, DamagedSnapshot):
                continue
        return infos

    def newest(self) -> SnapshotInfo | None:
        snapshots = self.list()
        return snapshots[-1] if snapshots else None

    def info(self, version: int) -> SnapshotInfo:
        """Snapshot ``version``'s manifest.

        Raises
        ------
        KeyError
            If there is no snapshot ``version``.
        DamagedSnapshot
            If its ``snapshot.json`` is missing or is not a manifest of this version.
        """
        path = self._path(version)
        try:
            text = (path / "snapshot.json").read_text(encoding="utf-8")
        except FileNotFoundError:
            if not path.is_dir():
                raise KeyError(f"no snapshot {version}") from None
            raise DamagedSnapshot(version, "snapshot.json is missing") from None
        try:
            info = SnapshotInfo(**json.loads(text))
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise DamagedSnapshot(version, f"snapshot.json: {error}") from None
        if info.version != version:
            raise DamagedSnapshot(version, f"snapshot.json names version {info.version}")
        return info

    def load(self, version: int) -> tuple[Recommender, SnapshotInfo]:
        """Snapshot ``version``'s model and manifest.

        Raises
        ------
        KeyError
            If there is no snapshot ``version``, or it is deleted (pruned) while it is read.
        DamagedSnapshot
            If it is there but cannot be read (see the class).
        """
        path = self._path(version)
        info = self.info(version)
        try:
            model = Recommender.load(path)
        except Exception as error:
            raise self._failure(version, error) from error
        return model, info

    def load_policies(self, version: int) -> dict[str, Policy]:
        """The policies snapshot ``version`` holds, by name (empty if it holds none), read with
        ``Policy.load``.

        Raises
        ------
        KeyError
            If there is no snapshot ``version`` (or it vanishes while it is read).
        DamagedSnapshot
            If a policy in it cannot be read.
        """
        from lifelong_rec.policy import Policy  # the service's import, not the store's

        path = self._path(version)
        if not path.is_dir():
            raise KeyError(f"no snapshot {version}")
        folder = path / POLICIES_FOLDER
        policies: dict[str, Policy] = {}
        try:
            names = sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
            for name in names:
                _check_policy_name(name)
                policies[name] = Policy.load(folder / name)
        except Exception as error:
            raise self._failure(version, error) from error
        return policies

    def _failure(self, version: int, error: Exception) -> Exception:
        """What a failed read of snapshot ``version`` raises: KeyError if it is gone (a
        FileNotFoundError because a prune renamed it away mid-read), else DamagedSnapshot."""
        if not self._path(version).is_dir():
            return KeyError(f"no snapshot {version} (deleted while it was read)")
        return DamagedSnapshot(version, f"{type(error).__name__}: {error}")

    def _path(self, version: int) -> Path:
        return self.folder / f"{_PREFIX}{version:06d}"


def _check_policy_name(name: str) -> None:
    if not isinstance(name, str) or not _POLICY_NAME.fullmatch(name):
        raise ValueError(
            f"policy name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
            "not starting with '.', '_' or '-'"
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder, deepest first."""
    for root, folders, files in os.walk(folder, topdown=False):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        for name in folders:
            _fsync_dir(Path(root) / name)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
