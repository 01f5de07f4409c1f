"""Bearer tokens: random secrets of which only a SHA-256 hash is stored, in the ledger's own database.

A token is 32 random bytes, so a plain SHA-256 of it cannot be reversed by
guessing: a slow password hash would only slow every request down.  The
server looks a presented token up by its hash (an index probe that tells an
attacker nothing about any stored hash) and compares the row it finds in
constant time.  The table lives beside the log, so every `serve` on one
PostgreSQL database shares the tokens, and a revocation holds at the next
request everywhere.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

import attrs

from vmledger.eventstore.errors import InvalidRequestError, StorageError, TokenExistsError, UnknownTokenError

__all__ = ["Role", "Token", "TokenStore", "new_secret", "token_hash", "check_token_name", "SCHEMA"]

SCHEMA = ("CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
          "hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_PREFIX = "vml_"


class Role(enum.Enum):
    """What a token may do; each role may do what the roles before it may."""

    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: "Role") -> bool:
        """Tell whether this role may do what `needed` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


@attrs.frozen(kw_only=True)
class Token:
    """A token as the server knows it: its name (the principal), role and creation time; never its secret."""

    name: str
    role: Role
    created_at: str

    def to_dict(self) -> dict[str, str]:
        """Return the token's public fields."""
        return {"name": self.name, "role": self.role.value, "created_at": self.created_at}


def new_secret() -> str:
    """Return a new random token: a prefix that marks it as a vmledger token, then 256 random bits."""
    return _PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    """Return the stored hash of a token."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_token_name(name: object) -> str:
    """Return `name` if it can name a token: 1 to 64 letters, digits and `._@-`, starting with a letter or digit.

    Raises:
        InvalidRequestError: it cannot.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"invalid token name {name!r} (1 to 64 letters, digits and ._@-, starting with a letter or digit)")
    return name


def _role(role: object) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidRequestError(f"invalid role {role!r} (use reader, operator or admin)") from None


def _numbered(sql: str) -> str:
    """Return `sql` with its `?` placeholders as PostgreSQL's `$1`, `$2`, ..."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


class TokenStore:
    """The `tokens` table of one ledger database: add, list, revoke and find tokens.

    Writes run on a short connection of their own (the log's writer is
    busy with appends); `find` reads through `fetch`, the log's readers.
    """

    def __init__(self, url: str, fetch: Fetch, *, busy_timeout: float = 30.0) -> None:
        self._url = url
        self._fetch = fetch
        self._busy_timeout = busy_timeout

    @property
    def _postgres(self) -> bool:
        return self._url.startswith(("postgresql://", "postgres://"))

    async def _write(self, sql: str, params: Sequence[Any]) -> int:
        """Create the table if needed and run one statement in its own transaction; return the rows it changed."""
        try:
            if self._postgres:
                import asyncpg

                conn = await asyncpg.connect(self._url)
                try:
                    async with conn.transaction():
                        # Two servers starting at once would race on CREATE TABLE's catalogue rows.
                        await conn.execute("SELECT pg_advisory_xact_lock(7311457)")
                        await conn.execute(SCHEMA)
                        if not sql:
                            return 0
                        status = await conn.execute(_numbered(sql), *params)
                        return int(status.rsplit(" ", 1)[-1])
                finally:
                    await conn.close()
            import aiosqlite

            from vmledger._compose import sqlite_path

            async with aiosqlite.connect(sqlite_path(self._url), timeout=self._busy_timeout,
                                         isolation_level=None) as db:
                await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await db.execute(SCHEMA)
                    changed = 0
                    if sql:
                        cursor = await db.execute(sql, params)
                        changed = cursor.rowcount
                    await db.execute("COMMIT")
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                return changed
        except InvalidRequestError:
            raise
        except Exception as e:
            if type(e).__name__ in ("IntegrityError", "UniqueViolationError"):
                raise TokenExistsError(f"a token named {params[0]!r} exists already") from e
            raise StorageError(f"cannot write the tokens table: {e}") from e

    async def create_table(self) -> None:
        """Create the `tokens` table if the database has none yet."""
        await self._write("", ())

    async def add(self, name: str, role: str) -> str:
        """Create a token named `name` with `role`; return its secret, which is never stored.

        Raises:
            InvalidRequestError: a bad name or role.
            TokenExistsError: a token of that name exists.
        """
        name, checked = check_token_name(name), _role(role)
        secret = new_secret()
        await self._write("INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?)",
                          (name, checked.value, token_hash(secret),
                           datetime.now(timezone.utc).isoformat(timespec="seconds")))
        return secret

    async def revoke(self, name: str) -> None:
        """Delete the token named `name`.

        Raises:
            InvalidRequestError: a malformed name.
            UnknownTokenError: no token has that name.
        """
        if not await self._write("DELETE FROM tokens WHERE name = ?", (check_token_name(name),)):
            raise UnknownTokenError(f"no token named {name!r}")

    async def tokens(self) -> list[Token]:
        """Return every token, by name."""
        await self.create_table()
        rows = await self._fetch("SELECT name, role, created_at FROM tokens ORDER BY name", ())
        return [Token(name=n, role=Role(r), created_at=c) for n, r, c in rows]

    async def find(self, secret: str) -> Token | None:
        """Return the token whose secret is `secret`, or None."""
        wanted = token_hash(secret)
        rows = await self._fetch("SELECT name, role, created_at, hash FROM tokens WHERE hash = ?", (wanted,))
        for name, role, created_at, stored in rows:
            if hmac.compare_digest(stored, wanted):
                return Token(name=name, role=Role(role), created_at=created_at)
        return None
