"""Shared fixtures: where the real data sets are, the PostgreSQL test server, small helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def datasets_dir() -> Path:
    """The shared real data sets: $LIFELONG_REC_DATASETS, else ../shared/datasets."""
    return Path(os.environ.get("LIFELONG_REC_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    folder = datasets_dir()
    if not (folder / "ml-100k" / "u.data").is_file():
        pytest.skip(f"real data sets not found at {folder} (set LIFELONG_REC_DATASETS)")
    return folder


# PostgreSQL: the server CI runs on 127.0.0.1:5432; tests use a schema of their own each.
POSTGRES_ENV = "LIFELONG_REC_TEST_POSTGRES"
REQUIRE_POSTGRES_ENV = "LIFELONG_REC_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL, from $LIFELONG_REC_TEST_POSTGRES, checked once per session.

    Without it (or with the server unreachable) the PostgreSQL tests skip, all with one reason;
    with LIFELONG_REC_REQUIRE_POSTGRES=1 (as in CI) they fail instead.
    """
    url = os.environ.get(POSTGRES_ENV, "")
    problem = None
    if not url:
        problem = (
            f"set {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/test to run the "
            "PostgreSQL tests"
        )
    else:
        try:
            import psycopg

            with psycopg.connect(url, connect_timeout=5) as connection:
                connection.execute("SELECT 1")
        except ImportError:
            problem = "psycopg is not installed: pip install -e '.[dev]'"
        except psycopg.Error as error:
            problem = f"the PostgreSQL server at {url} is unreachable: {error}"
    if problem is not None:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1, but {problem}", pytrace=False)
        pytest.skip(problem)
    return url


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """The name of a fresh schema for one test (not created: the log creates it), dropped after."""
    import psycopg

    schema = f"lr_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
