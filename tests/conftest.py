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
# (The service lets both be: settings.OTHER_VARIABLES.)
POSTGRES_URL = os.environ.get(POSTGRES_ENV, "")
REQUIRE_POSTGRES = os.environ.get(REQUIRE_POSTGRES_ENV, "") == "1"
NO_POSTGRES = (
    f"set {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/test to run the PostgreSQL tests"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL test server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a server URL, skip the PostgreSQL tests by a marker: pytest -ra then folds them
    into one line per file (a skip raised in a fixture is reported once per test)."""
    if POSTGRES_URL or REQUIRE_POSTGRES:
        return
    for item in items:
        if "postgres" in item.keywords or "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=NO_POSTGRES))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL, from $LIFELONG_REC_TEST_POSTGRES, checked once per session.

    Without it (or with the server unreachable) the PostgreSQL tests skip, all with one reason;
    with LIFELONG_REC_REQUIRE_POSTGRES=1 (as in CI) they fail instead.
    """
    url = POSTGRES_URL
    problem = None
    if not url:
        problem = NO_POSTGRES
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
        if REQUIRE_POSTGRES:
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


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """PyTorch on one thread for a module (tiny models run fastest, and reproducibly, on
    one), the caller's thread count restored after it. Use it with
    ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
