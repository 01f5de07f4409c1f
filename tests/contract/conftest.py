"""Fixtures of the contract suite: one throwaway PostgreSQL cluster per session, a database per test."""

from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Iterator

import pytest

from tests.pg import PG_VERSION, PgUnavailableError, cluster, create_database, find_bindir

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """Start one PostgreSQL cluster for the session and yield the DSN of its database.

    Missing server binaries or driver skip the PostgreSQL tests locally and
    fail them under `CI=true`; a server that is there but will not start fails
    them everywhere.
    """
    try:
        find_bindir()
        if importlib.util.find_spec("asyncpg") is None:
            raise PgUnavailableError("the asyncpg driver is not installed")
    except PgUnavailableError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL tests cannot run under CI=true: {e}")
        pytest.skip(
            f"PostgreSQL backend not tested: {e}. To enable: apt-get install postgresql-{PG_VERSION} "
            "(or set PG_BINDIR to a directory holding initdb and pg_ctl) and pip install -e '.[test]'")
    with cluster() as dsn:
        yield dsn


@pytest.fixture
def pg_database(pg_dsn: str) -> str:
    """Return the DSN of a fresh, empty database on the session's cluster."""
    return create_database(pg_dsn, f"t_{next(_databases)}")


@pytest.fixture
def pg_icu_database(pg_dsn: str) -> str:
    """Return the DSN of a fresh database whose default collation is ICU `en-US`, not bytewise."""
    return create_database(pg_dsn, f"t_{next(_databases)}", icu_locale="en-US")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """Return the URL of an empty ledger database on each backend (a module may define its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")  # type: ignore[operator]
    return request.getfixturevalue("pg_database")
