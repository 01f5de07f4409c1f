"""A PostgreSQL role with SELECT alone reads a ledger through the CLI (issue 18)."""

from __future__ import annotations

import asyncio
import pathlib
import urllib.parse

import pytest

from vmledger.cli import main


async def _grant_select_only(dsn: str, role: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    finally:
        await conn.close()


def _as_role(dsn: str, role: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@"))


def test_select_only_role_reads_and_cannot_write(pg_database: str, tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every read command works for a role with SELECT only, with the owner's output; a write exits 1 (issue 18)."""
    monkeypatch.chdir(tmp_path)

    def run(db: str, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", db, *args])
        out, err = capsys.readouterr()
        return code, out, err

    assert run(pg_database, "define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
               "--vcpus", "2", "--max-vcpus", "4")[0] == 0
    assert run(pg_database, "start", "web")[0] == 0
    assert run(pg_database, "set", "web", "memory", "2GiB")[0] == 0
    asyncio.run(_grant_select_only(pg_database, "auditor"))
    auditor = _as_role(pg_database, "auditor")
    for command in ("list", "show web", "drift", "history", "events", "get web memory", "export", "verify"):
        owner = run(pg_database, *command.split())
        assert (command, run(auditor, *command.split())) == (command, owner)
    code, out, err = run(auditor, "set", "web", "memory", "1GiB")
    assert (code, out, err.startswith("vmledger: the database is read-only for this role")) == (1, "", True)
    assert run(pg_database, "get", "web", "memory") == (0, "2GiB\n", "")


def test_reads_of_an_empty_postgres_database_are_refused(pg_database: str, tmp_path: pathlib.Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A read on a PostgreSQL database without a ledger exits 2 naming the database, and creates no table (issue 18)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--db", pg_database, "drift"]) == 2
    name = urllib.parse.urlsplit(pg_database).path.lstrip("/")
    assert capsys.readouterr().err.startswith(
        f"vmledger: error: no ledger in the PostgreSQL database '{name}': it holds no vmledger tables")
    assert main(["--db", pg_database, "init"]) == 0
    assert capsys.readouterr().out == f"created an empty ledger at {pg_database}\n"
