"""MovieLens folders: 100K (u.data, u.item), 1M/10M (ratings.dat, movies.dat) and the
latest/20M/25M layout (ratings.csv, movies.csv). Every rating is an event of kind ``rating``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lifelong_rec.data.cleaning import as_text
from lifelong_rec.data.errors import InputError
from lifelong_rec.data.report import Rejected
from lifelong_rec.data.tables import RawTable, read_checked, read_csv
from lifelong_rec.events import Catalog

# The 19 genre flags of u.item, in file order (used when u.genre is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def detect_layout(path: Path) -> str:
    """Which MovieLens release a folder (or its ratings file) holds: "100k", "1m" or "latest".

    Raises
    ------
    InputError
        If the folder holds none of u.data, ratings.dat or ratings.csv.
    """
    folder = path if path.is_dir() else path.parent
    for name, layout in (("u.data", "100k"), ("ratings.dat", "1m"), ("ratings.csv", "latest")):
        if (folder / name).is_file():
            return layout
    raise InputError(
        "not a MovieLens folder: expected u.data (100K), ratings.dat (1M/10M) "
        "or ratings.csv (latest, 20M, 25M)",
        path=path,
    )


def read_movielens(path: str | Path) -> tuple[RawTable, Catalog]:
    """Raw rating rows and the movie catalog (titles and genres) of a MovieLens folder."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    layout = detect_layout(path)
    if layout == "100k":
        ratings, lines, malformed = read_csv(
            folder / "u.data", delimiter="\t", column_names=["user", "item", "value", "timestamp"]
        )
        catalog = _catalog_100k(folder)
        source = folder / "u.data"
    elif layout == "1m":
        source = folder / "ratings.dat"
        ratings, lines, malformed = _read_double_colon(
            source, ["user", "item", "value", "timestamp"]
        )
        movies = folder / "movies.dat"
        catalog = _catalog_from_frame(
            _read_double_colon(movies, ["item", "title", "genres"])[0] if movies.is_file() else None
        )
    else:
        source = folder / "ratings.csv"
        ratings, lines, malformed = read_csv(source, delimiter=",")
        ratings = ratings.rename(columns={"userId": "user", "movieId": "item", "rating": "value"})
        movies = folder / "movies.csv"
        catalog = _catalog_from_frame(
            read_csv(movies, delimiter=",")[0].rename(columns={"movieId": "item"})
            if movies.is_file()
            else None
        )
    missing = [c for c in ("user", "item", "value", "timestamp") if c not in ratings]
    if missing:
        raise InputError(f"missing columns {', '.join(missing)}", path=source)
    ratings = ratings[["user", "item", "value", "timestamp"]].assign(kind="rating")
    table = RawTable(
        frame=ratings,
        lines=lines,
        source=np.full(len(ratings), str(source)),
        malformed=malformed,
    )
    return table, catalog


def _read_double_colon(path: Path, names: list[str]) -> tuple[pd.DataFrame, np.ndarray, Rejected]:
    # The .dat files separate fields with "::" (and titles may contain a single ':'); they are
    # latin-1. Replace the separator by a tab, which never occurs in them, and read as TSV.
    data = read_checked(path, "latin-1").replace(b"::", b"\t")
    return read_csv(path, delimiter="\t", encoding="latin-1", column_names=names, data=data)


def _catalog_100k(folder: Path) -> Catalog:
    items_file = folder / "u.item"
    if not items_file.is_file():
        return Catalog.empty()
    genres = list(ML100K_GENRES)
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        names = [line.split("|")[0] for line in genre_file.read_text("latin-1").splitlines()]
        genres = [name for name in names if name] or genres
    columns = ["item", "title", "release", "video_release", "url", *genres]
    frame, _, _ = read_csv(items_file, delimiter="|", encoding="latin-1", column_names=columns)
    flags = frame[genres].to_numpy() == "1"
    frame = frame.assign(
        genres=["|".join(np.asarray(genres)[row]) for row in flags],
    )
    return _catalog_from_frame(frame)


def _catalog_from_frame(frame: pd.DataFrame | None) -> Catalog:
    if frame is None or frame.empty:
        return Catalog.empty()
    frame = frame.drop_duplicates("item", keep="last")
    genres = [
        tuple(g for g in text.split("|") if g and g != "(no genres listed)")
        for text in frame["genres"].fillna("").tolist()
    ]
    titles = np.char.strip(as_text(frame["title"]))
    texts = [
        f"{t}. {', '.join(g)}" if g else t for t, g in zip(titles.tolist(), genres, strict=True)
    ]
    return Catalog(
        item=as_text(frame["item"]),
        title=titles,
        text=np.array(texts, dtype=str),
        categories=tuple(genres),
    )
