"""One entry point for every supported source: ``load(path, format)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lifelong_rec.data.cleaning import CleaningConfig, clean
from lifelong_rec.data.dataset import Dataset
from lifelong_rec.data.errors import InputError
from lifelong_rec.data.movielens import read_movielens
from lifelong_rec.data.obd import read_obd
from lifelong_rec.data.tables import SUFFIXES, RawTable, read_table
from lifelong_rec.events import Catalog

FORMATS: tuple[str, ...] = ("movielens", "obd", "csv", "parquet", "jsonl")
MOVIELENS_CLEANING = CleaningConfig(max_events_per_second=None)


def detect_format(path: str | Path) -> str:
    """Guess the format from a path: a MovieLens folder, an OBD log, or a file suffix."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if any((folder / name).is_file() for name in ("u.data", "ratings.dat", "ratings.csv")):
        return "movielens"
    if (folder / "item_context.csv").is_file():
        return "obd"
    for format, suffixes in SUFFIXES.items():
        if path.suffix.lower() in suffixes:
            return format
    raise InputError(f"cannot tell the format; pass one of {', '.join(FORMATS)}", path=path)


def read_raw(
    path: str | Path,
    format: str = "auto",
    *,
    mapping: Mapping[str, str] | str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> tuple[RawTable, Catalog]:
    """Read a source into raw rows (not yet cleaned) and its catalog."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    format = detect_format(path) if format == "auto" else format
    if format == "movielens":
        return read_movielens(path)
    if format == "obd":
        return read_obd(path)
    if format in ("csv", "parquet", "jsonl"):
        table = read_table(path, format, mapping=mapping, delimiter=delimiter, encoding=encoding)
        return table, Catalog.empty()
    raise InputError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")


def load(
    path: str | Path,
    format: str = "auto",
    *,
    mapping: Mapping[str, str] | str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    config: CleaningConfig | None = None,
) -> Dataset:
    """Read, validate, clean and normalise a file or folder of events.

    Parameters
    ----------
    path : path
        A file, or a folder (a MovieLens release, an OBD campaign, or files of one format).
    format : {"auto", "movielens", "obd", "csv", "parquet", "jsonl"}
    mapping : str or mapping, optional
        For csv, parquet and jsonl: which column holds each event field, for example
        ``"user=userId,item=movieId,time=timestamp,value=rating,kind=event"``.
    delimiter : str, optional
        For csv; sniffed from the header when None.
    encoding : str
        For csv and jsonl.
    config : CleaningConfig, optional
        Defaults to ``CleaningConfig()``, except for MovieLens, where the bot-burst check is
        off: its ratings were often entered or imported in bulk (one user of latest-small has
        87 ratings within one second), which is not a bot clicking.

    Returns
    -------
    Dataset
        ``.events`` is the clean :class:`EventBatch` in time order.

    Raises
    ------
    InputError
        If the source cannot be read at all (missing, empty, binary, wrong encoding or
        delimiter, a required column missing). Bad rows do not raise: they are rejected and
        counted in ``.report`` and kept in ``.rejected``.

    Examples
    --------
    >>> data = load("../shared/datasets/ml-100k", "movielens")  # doctest: +SKIP
    >>> len(data.events), data.report.rejected_total  # doctest: +SKIP
    (100000, 0)
    """
    table, catalog = read_raw(path, format, mapping=mapping, delimiter=delimiter, encoding=encoding)
    if config is None:
        movielens = (detect_format(path) if format == "auto" else format) == "movielens"
        config = MOVIELENS_CLEANING if movielens else CleaningConfig()
    cleaned = clean(
        table.frame,
        source=table.source,
        lines=table.lines,
        context_columns=table.context_columns,
        config=config,
        malformed=table.malformed,
        name=str(path),
    )
    return Dataset(
        events=cleaned.events,
        catalog=catalog,
        report=cleaned.report,
        rejected=cleaned.rejected,
        name=str(path),
    )
