"""Model snapshots: immutable, versioned, published atomically, in a folder or in PostgreSQL.

:class:`SnapshotStore` keeps them on disk for one machine; :class:`PostgresSnapshotStore`
keeps them in the database, so that API replicas on other machines load what a learner
process publishes with no shared disk. Both have the same methods and errors.

On disk, a snapshot is a folder ``v000042/`` holding the model as ``Recommender.save`` writes
it (JSON and npz, no pickle), the live policies as each ``Policy.save`` writes it under
``policies/<name>/`` (when the learner was given them), and ``snapshot.json``: its version,
the log offset it has learned up to (exclusive), and when it was made. It is written under a
temporary name unique to the write (``.tmp-<version>-<uuid>-<pid>``) and renamed into place, so
a reader (or a restart after a crash) sees a whole snapshot or none. ``pin.json`` names the
version serving is pinned to (a rollback), replaced atomically.

Reading a snapshot raises ``KeyError`` when it is not there (or is deleted while it is read)
and :class:`DamagedSnapshot` when it is there but cannot be read.

In PostgreSQL, a snapshot is a row of ``snapshots`` keyed by the store's ``name`` (the model
spec, or ``arm:<spec>`` for an experiment arm's model) and the version, with the same files
in a tar archive; the pin is a row of ``snapshot_pins``. Writing either sends a notice on the
channel :data:`CHANNEL` (payload ``<schema>/<name>``) when its transaction commits:
:class:`~lifelong_rec.service.follower.Follower` listens for it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lifelong_rec.models import Recommender

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from lifelong_rec.policy import Policy

log = logging.getLogger("lifelong_rec.service")

_PREFIX = "v"
_VERSION_FOLDER = re.compile(rf"{_PREFIX}(\d{{6,}})")
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PIN_FILE = "pin.json"
PIN_FORMAT_VERSION = 1
POLICIES_FOLDER = "policies"
#: the PostgreSQL channel on which a published snapshot or a changed pin is announced
CHANNEL = "lifelong_rec_snapshots"


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
    ``created_at`` (Unix seconds), the ``model`` it holds (its repr) and, when its learner
    measured it, the online ``quality`` of the serving model then (``OnlineQuality`` as a
    dict): what API replicas report for a model learned in another process. ``settled`` is,
    for a learner process's snapshot, the last settlement number (of the decisions table) its
    policies learned from."""

    version: int
    offset: int
    created_at: float
    model: str
    quality: dict[str, float] | None = None
    settled: int | None = None

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

    def close(self) -> None:
        """Nothing to release (the PostgreSQL store's counterpart closes its connections)."""

    # -------------------------------------------------------------- writing

    def save(
        self,
        model: Recommender,
        version: int,
        offset: int,
        policies: Mapping[str, SavesItself] | None = None,
        quality: Mapping[str, float] | None = None,
        settled: int | None = None,
    ) -> SnapshotInfo:
        """Write ``model`` (and ``policies``, each into ``policies/<name>/``) as snapshot
        ``version``, atomically, with the learner's online ``quality``.

        Raises
        ------
        ValueError
            If a policy name is not a safe folder name (letters, digits, ``_ . -``, not
            starting with a dot).
        FileExistsError
            If snapshot ``version`` exists already.
        """
        policies, info = _manifest(model, version, offset, policies, quality, settled)
        final = self._path(version)
        if final.exists():
            raise FileExistsError(f"snapshot {version} exists already")
        temporary = self.folder / f".tmp-{version}-{uuid.uuid4().hex}-{os.getpid()}"
        try:
            _write_files(temporary, model, policies, info)
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
        path = self._path(version)
        if not path.is_dir():
            raise KeyError(f"no snapshot {version}")
        try:
            return _read_policies(path)
        except Exception as error:
            raise self._failure(version, error) from error

    def _failure(self, version: int, error: Exception) -> Exception:
        """What a failed read of snapshot ``version`` raises: KeyError if it is gone (a
        FileNotFoundError because a prune renamed it away mid-read), else DamagedSnapshot."""
        if not self._path(version).is_dir():
            return KeyError(f"no snapshot {version} (deleted while it was read)")
        return DamagedSnapshot(version, f"{type(error).__name__}: {error}")

    def _path(self, version: int) -> Path:
        return self.folder / f"{_PREFIX}{version:06d}"


class PostgresSnapshotStore:
    """:class:`SnapshotStore` in PostgreSQL: the snapshots of one ``name`` in ``schema``, read
    and written by processes on any machine.

    A save is one transaction (the row, its archive and the notice), so a reader sees a whole
    snapshot or none; a second save of a version fails on the primary key, which also fences
    a learner that lost its lease without noticing (its next save is refused). A prune deletes
    rows; a reader that loses the race gets ``KeyError``.

    Parameters
    ----------
    url : str
        ``postgresql://user@host:port/dbname``.
    schema : str
        The event log's schema (the service's tables are migrated in it).
    name : str
        Whose snapshots: the model spec, or ``arm:<spec>`` for an arm's model.
    timeout : float
        Seconds to wait for a connection.
    """

    def __init__(
        self, url: str, schema: str = "public", name: str = "mf", *, timeout: float = 10.0
    ) -> None:
        from lifelong_rec.service.stores import open_pool

        if not name:
            raise ValueError("name: a snapshot store needs a name (the model spec)")
        self.url, self.schema, self.name = url, schema, name
        self.key = f"{schema}/{name}"  # the notices' payload
        self._pool: ConnectionPool = open_pool(url, schema, pool_size=2, timeout=timeout)

    def __repr__(self) -> str:
        return f"PostgresSnapshotStore(schema={self.schema!r}, name={self.name!r})"

    def close(self) -> None:
        self._pool.close()

    # -------------------------------------------------------------- writing

    def save(
        self,
        model: Recommender,
        version: int,
        offset: int,
        policies: Mapping[str, SavesItself] | None = None,
        quality: Mapping[str, float] | None = None,
        settled: int | None = None,
    ) -> SnapshotInfo:
        """As :meth:`SnapshotStore.save`; the snapshot's files travel as one tar archive."""
        policies, info = _manifest(model, version, offset, policies, quality, settled)
        with tempfile.TemporaryDirectory(prefix="lifelong-rec-snapshot-") as folder:
            _write_files(Path(folder), model, policies, info)
            archive = _pack(Path(folder))
        with self._pool.connection() as connection:
            inserted = connection.execute(
                'INSERT INTO snapshots(name, version, "offset", created_at, model, quality, '
                "settled, archive) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (self.name, version, offset, info.created_at, info.model,
                 None if info.quality is None else json.dumps(info.quality), settled, archive),
            ).rowcount  # fmt: skip
            if not inserted:
                raise FileExistsError(f"snapshot {version} of {self.name} exists already")
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.key))
        return info

    def prune(self, keep: int, protect: set[int] | frozenset[int] = frozenset()) -> None:
        """Delete all but the newest ``keep`` snapshots, never those in ``protect`` nor the
        pinned one (read in the same statement)."""
        with self._pool.connection() as connection:
            connection.execute(
                "DELETE FROM snapshots WHERE name = %(name)s AND version < ("
                "  SELECT COALESCE(MIN(version), 0) FROM ("
                "    SELECT version FROM snapshots WHERE name = %(name)s"
                "    ORDER BY version DESC LIMIT %(keep)s) AS newest)"
                " AND version <> ALL(%(protect)s)"
                " AND version NOT IN (SELECT version FROM snapshot_pins WHERE name = %(name)s)",
                {"name": self.name, "keep": keep, "protect": sorted(protect)},
            )

    def write_pin(self, version: int | None) -> None:
        """Pin serving to ``version`` (None releases it) for every process, with a notice."""
        with self._pool.connection() as connection:
            if version is None:
                connection.execute("DELETE FROM snapshot_pins WHERE name = %s", (self.name,))
            else:
                connection.execute(
                    "INSERT INTO snapshot_pins(name, version) VALUES (%s, %s) "
                    "ON CONFLICT(name) DO UPDATE SET version = excluded.version",
                    (self.name, int(version)),
                )
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.key))

    # -------------------------------------------------------------- reading

    def read_pin(self) -> int | None:
        with self._pool.connection() as connection:
            row = connection.execute(
                "SELECT version FROM snapshot_pins WHERE name = %s", (self.name,)
            ).fetchone()
        return None if row is None else int(row[0])

    def head(self) -> tuple[SnapshotInfo | None, int | None]:
        """The newest snapshot's manifest and the pin, in one query (what a follower polls)."""
        with self._pool.connection() as connection:
            row = connection.execute(
                'SELECT s.version, s."offset", s.created_at, s.model, s.quality, s.settled, '
                "  (SELECT version FROM snapshot_pins WHERE name = %(name)s) "
                "FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
                "  SELECT * FROM snapshots WHERE name = %(name)s ORDER BY version DESC LIMIT 1"
                ") AS s ON true",
                {"name": self.name},
            ).fetchone()
        assert row is not None  # the LEFT JOIN always gives one row
        newest = None if row[0] is None else _info_from_row(row[:6])
        return newest, None if row[6] is None else int(row[6])

    def versions(self) -> list[int]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT version FROM snapshots WHERE name = %s ORDER BY version", (self.name,)
            ).fetchall()
        return [int(version) for (version,) in rows]

    def list(self) -> list[SnapshotInfo]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                f"SELECT {_INFO_COLUMNS} FROM snapshots WHERE name = %s ORDER BY version",
                (self.name,),
            ).fetchall()
        return [_info_from_row(row) for row in rows]

    def newest(self) -> SnapshotInfo | None:
        return self.head()[0]

    def info(self, version: int) -> SnapshotInfo:
        with self._pool.connection() as connection:
            row = connection.execute(
                f"SELECT {_INFO_COLUMNS} FROM snapshots WHERE name = %s AND version = %s",
                (self.name, version),
            ).fetchone()
        if row is None:
            raise KeyError(f"no snapshot {version} of {self.name}")
        return _info_from_row(row)

    def load(self, version: int) -> tuple[Recommender, SnapshotInfo]:
        """Snapshot ``version``'s model and manifest (errors as :meth:`SnapshotStore.load`)."""
        with self._unpacked(version) as (folder, info):
            return Recommender.load(folder), info

    def load_policies(self, version: int) -> dict[str, Policy]:
        with self._unpacked(version) as (folder, _):
            return _read_policies(folder)

    def load_all(self, version: int) -> tuple[Recommender, SnapshotInfo, dict[str, Policy]]:
        """:meth:`load` and :meth:`load_policies` from one read of the snapshot."""
        with self._unpacked(version) as (folder, info):
            return Recommender.load(folder), info, _read_policies(folder)

    @contextmanager
    def _unpacked(self, version: int) -> Iterator[tuple[Path, SnapshotInfo]]:
        """Snapshot ``version``'s files in a temporary folder; a failure to read them is a
        DamagedSnapshot."""
        with self._pool.connection() as connection:
            row = connection.execute(
                f"SELECT {_INFO_COLUMNS}, archive FROM snapshots WHERE name = %s AND version = %s",
                (self.name, version),
            ).fetchone()
        if row is None:
            raise KeyError(f"no snapshot {version} of {self.name}")
        info = _info_from_row(row[:6])
        with tempfile.TemporaryDirectory(prefix="lifelong-rec-snapshot-") as folder:
            try:
                with tarfile.open(fileobj=io.BytesIO(row[6]), mode="r:") as archive:
                    archive.extractall(folder, filter="data")  # no path leaves the folder
                yield Path(folder), info
            except DamagedSnapshot:
                raise
            except Exception as error:  # the row is there: whatever fails, it is damaged
                raise DamagedSnapshot(version, f"{type(error).__name__}: {error}") from error


_INFO_COLUMNS = 'version, "offset", created_at, model, quality, settled'


def _info_from_row(row: tuple | object) -> SnapshotInfo:
    """A manifest from the columns :data:`_INFO_COLUMNS`, in their order."""
    version, offset, created_at, model, quality, settled = row  # type: ignore[misc]
    return SnapshotInfo(
        int(version), int(offset), float(created_at), str(model),
        None if quality is None else json.loads(quality),
        None if settled is None else int(settled),
    )  # fmt: skip


def _manifest(
    model: Recommender,
    version: int,
    offset: int,
    policies: Mapping[str, SavesItself] | None,
    quality: Mapping[str, float] | None,
    settled: int | None,
) -> tuple[dict[str, SavesItself], SnapshotInfo]:
    """What both stores save: the policies (their names checked) and the manifest."""
    policies = dict(policies or {})
    for name in policies:
        _check_policy_name(name)
    floats = None if quality is None else {key: float(value) for key, value in quality.items()}
    return policies, SnapshotInfo(version, offset, time.time(), repr(model), floats, settled)


def _write_files(
    folder: Path, model: Recommender, policies: Mapping[str, SavesItself], info: SnapshotInfo
) -> None:
    """A snapshot's files: the model, each policy under ``policies/<name>/``, the manifest."""
    model.save(folder)
    for name, policy in policies.items():
        policy.save(folder / POLICIES_FOLDER / name)
    (folder / "snapshot.json").write_text(json.dumps(info.to_dict()), encoding="utf-8")


def _read_policies(folder: Path) -> dict[str, Policy]:
    """The policies under a snapshot's ``policies/`` folder, by name."""
    from lifelong_rec.policy import Policy  # the service's import, not the store's

    policies: dict[str, Policy] = {}
    root = folder / POLICIES_FOLDER
    names = sorted(entry.name for entry in root.iterdir()) if root.is_dir() else []
    for name in names:
        _check_policy_name(name)
        policies[name] = Policy.load(root / name)
    return policies


def _pack(folder: Path) -> bytes:
    """The files under ``folder`` as an uncompressed tar: float arrays shrink little when
    compressed, and the learner writes one every publish."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


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
