"""A policy's saved folder: ``policy.json`` (format version, name, parameters, the random
generator's state) and ``arrays.npz`` (learned arrays), read and written without pickle.

:meth:`Policy.save <lifelong_rec.policy.Policy.save>` and :meth:`Policy.load
<lifelong_rec.policy.Policy.load>` use these; this module knows files, not policies.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

#: bumped when the folder's layout or meaning changes; older folders are refused
FORMAT_VERSION = 1
STATE_FILE = "policy.json"
ARRAYS_FILE = "arrays.npz"


@dataclass(frozen=True, eq=False)
class SavedPolicy:
    """What a policy folder holds.

    Attributes
    ----------
    name : str
        The policy's registered short name (``"linucb"``, ...).
    params : dict
        Its constructor arguments (JSON values).
    rng_state : dict
        ``bit_generator.state`` of its private generator (JSON values).
    arrays : dict of str to array
        Its learned state; no object arrays.
    """

    name: str
    params: dict[str, Any]
    rng_state: dict[str, Any]
    arrays: dict[str, np.ndarray]


def write_policy(folder: str | Path, saved: SavedPolicy) -> None:
    """Write ``saved`` into ``folder`` (created if needed), ``policy.json`` last.

    Each file is written to a temporary name and renamed into place, so a reader never sees a
    half-written file.

    Raises
    ------
    ValueError
        Naming the parameter or array that cannot be stored without pickle.
    """
    folder = Path(folder)
    for name, array in saved.arrays.items():
        if array.dtype.hasobject:
            raise ValueError(f"arrays[{name!r}]: object arrays cannot be saved without pickle")
    payload = {
        "format_version": FORMAT_VERSION,
        "name": saved.name,
        "params": saved.params,
        "rng_state": saved.rng_state,
    }
    try:
        text = json.dumps(payload, indent=1, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"params of {saved.name!r} are not JSON values: {error}") from None
    folder.mkdir(parents=True, exist_ok=True)
    arrays_path = folder / ARRAYS_FILE
    partial = arrays_path.with_name(ARRAYS_FILE + ".partial")
    with partial.open("wb") as file:  # a file object: np.savez would append ".npz" to a name
        np.savez(file, allow_pickle=False, **cast(dict[str, Any], saved.arrays))
    os.replace(partial, arrays_path)
    state_path = folder / STATE_FILE
    partial = state_path.with_name(STATE_FILE + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, state_path)


def read_policy(folder: str | Path) -> SavedPolicy:
    """Read a folder written by :func:`write_policy`.

    Raises
    ------
    ValueError
        Naming the file and the problem: a missing file, JSON that does not parse, a format
        version other than :data:`FORMAT_VERSION`, a missing or ill-typed entry, arrays that
        would need pickle.
    """
    folder = Path(folder)
    state_path, arrays_path = folder / STATE_FILE, folder / ARRAYS_FILE
    for path in (state_path, arrays_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing; {folder} is not a saved policy folder")
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{state_path}: not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{state_path}: expected a JSON object, got {type(payload).__name__}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{state_path}: policy format version {version!r} is not the supported {FORMAT_VERSION}"
        )
    for key, kind in (("name", str), ("params", dict), ("rng_state", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{state_path}: {key!r} is missing or not a {kind.__name__}")
    try:
        stored = np.load(arrays_path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError(f"expected an .npz archive, got a {type(stored).__name__}")
        with stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{arrays_path}: cannot be read without pickle: {error}") from None
    return SavedPolicy(payload["name"], payload["params"], payload["rng_state"], arrays)
