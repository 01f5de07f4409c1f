"""The one composition root: `open(url, hypervisor=...)` wires store, projections and hypervisor."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from vmledger.adapters.port import Hypervisor
from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.eventstore.backends.sqlite import SQLiteEventLog
from vmledger.eventstore.catalogue import Kind, check_seconds, lookup, shown
from vmledger.eventstore.hypervisor import DomainSpec, Observation
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.projections.store import TableProjector
from vmledger.ledger import Ledger

__all__ = ["open", "sqlite_path", "redacted", "DEFAULT_DB"]

DEFAULT_DB = "sqlite:///vmledger.db"
#: URL schemes that a bare path must not start with: a typo of a URL, not a file name.
_SCHEMES = frozenset({"sqlite", "sqlite3", "file", "postgresql", "postgres", "pg"})
_log = logging.getLogger("vmledger")
_PORT_METHODS = ("define", "undefine", "start", "stop", "apply_persistent", "apply_live", "observe", "aclose")


def sqlite_path(url: str) -> str:
    """Return the file path of a `sqlite:///` URL or a bare path.

    `sqlite:///ledger.db` is relative to the current directory and
    `sqlite:////var/lib/ledger.db` absolute, as in SQLAlchemy.

    Raises:
        InvalidRequestError: the URL names another scheme or no file, or holds a NUL.
    """
    if not isinstance(url, str):
        raise InvalidRequestError(f"a database URL must be text, not {type(url).__name__}")
    if "\x00" in url:
        raise InvalidRequestError(f"database URL {shown(url)} holds a NUL character")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif scheme == "sqlite":
        # `sqlite:ledger.db` and `sqlite://ledger.db` would otherwise name a file called so.
        rest = url[len("sqlite:"):].lstrip("/")
        raise InvalidRequestError(
            f"malformed database URL {shown(redacted(url))}: an SQLite URL has three slashes, e.g. sqlite:///{rest}")
    elif "://" in url or scheme in _SCHEMES:
        raise InvalidRequestError(
            f"unsupported database URL {shown(redacted(url))} (use sqlite:///PATH, a path, or postgresql://...)")
    else:
        path = url
    if not path or path.endswith(os.sep):
        raise InvalidRequestError(f"database URL {shown(url)} names no file")
    return path


def redacted(url: str) -> str:
    """Return a database URL as messages show it: a password in it (`user:PASSWORD@`, `?password=`) as `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    if "password=" in query:
        query = "&".join("password=***" if p.startswith("password=") else p for p in query.split("&"))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query)) if (netloc, query) != (
        parts.netloc, parts.query) else url


def _database_name(url: str) -> str:
    """Return a file-name-safe name for a server database URL (its database name)."""
    name = urllib.parse.urlsplit(url).path.lstrip("/") or "postgres"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _hypervisor(uri: str | Hypervisor, db_path: str, timeout: float) -> Hypervisor:
    if not isinstance(uri, str):
        if not all(callable(getattr(uri, m, None)) for m in _PORT_METHODS):
            raise InvalidRequestError(f"hypervisor must be 'sim', 'libvirt+URI' or an adapter, not {shown(uri)}")
        return uri
    if uri == "sim":
        return SimulatedHypervisor.for_database(db_path)
    if uri.startswith("sim:"):
        if not uri[len("sim:"):] or "\x00" in uri:
            raise InvalidRequestError(f"hypervisor {shown(uri)} names no state file (use sim:PATH)")
        return SimulatedHypervisor(uri[len("sim:"):])
    if uri.startswith("libvirt+") and len(uri) > len("libvirt+"):
        from vmledger.adapters.libvirt import LibvirtHypervisor  # its imports are for libvirt's users alone

        return LibvirtHypervisor(uri[len("libvirt+"):], timeout=timeout)
    raise InvalidRequestError(
        f"unsupported hypervisor {shown(uri)} (use sim, sim:PATH, or libvirt+URI such as libvirt+qemu:///system)")


@contextlib.asynccontextmanager
async def open(  # noqa: A001 - the public name the design promises
    url: str = DEFAULT_DB,
    *,
    hypervisor: str | Hypervisor = "sim",
    hypervisor_timeout: float = 10.0,
    busy_timeout: float = 30.0,
    create: bool = True,
    read_only: bool = False,
) -> AsyncIterator[Ledger]:
    """Open the ledger at `url` in front of `hypervisor`, as an async context manager.

    `hypervisor` is `"sim"` (the simulated hypervisor whose state sits beside
    the database), `"sim:PATH"` (its state in PATH), `"libvirt+URI"` (e.g.
    `libvirt+qemu:///system`), or an object implementing
    `adapters.port.Hypervisor`.  A simulator whose state file is missing is
    started as the ledger last recorded its domains, unless `read_only`.

    `url` is `sqlite:///PATH` (or a bare path) or `postgresql://...`; with
    PostgreSQL the simulated hypervisor keeps its state in
    `vmledger-<database>.sim.json` in the current directory.

    With `create` false, a ledger that does not exist yet is an error
    rather than a new, empty one.  With `read_only` the ledger needs only
    read permission (on SQLite, on the file; on PostgreSQL, SELECT), never
    creates anything, and any write raises `StorageError`.  A database that
    holds other tables than a ledger's is refused either way.

    Opening never calls the hypervisor (but to start a simulator whose
    state file is missing, which is local): requests a dead process left without
    an outcome are resolved by `Ledger.observe`, not here, so that opening
    works while the hypervisor is down and reads never write.

    Raises:
        InvalidRequestError: an unsupported URL or hypervisor, a timeout that is
            not a finite number of seconds above 0, or `create` or `read_only` not a bool.
        LedgerNotFoundError: no ledger at `url`, and `create` is false or `read_only` true.
        NotALedgerError: the database holds data that is not a ledger.
        StorageError: the database cannot be opened.
    """
    hypervisor_timeout = check_seconds("the hypervisor timeout", hypervisor_timeout)
    busy_timeout = check_seconds("the busy timeout", busy_timeout)
    for flag, value in (("create", create), ("read_only", read_only)):
        if not isinstance(value, bool):  # "no" would be true
            raise InvalidRequestError(f"{flag} must be true or false, not {shown(value)}")
    log: Any
    if isinstance(url, str) and url.startswith(("postgresql://", "postgres://")):
        try:
            from vmledger.eventstore.backends.postgres import PostgresEventLog
        except ImportError as e:
            raise InvalidRequestError("postgresql:// needs asyncpg: pip install 'vmledger[postgres]'") from e
        log = PostgresEventLog(url, TableProjector(), busy_timeout=busy_timeout, create=create,
                               read_only=read_only)
        # The simulator's state needs a file; a server database has none beside it.
        sim_base = os.path.abspath("vmledger-" + _database_name(url))
    else:
        path = sqlite_path(url)
        log = SQLiteEventLog(path, TableProjector(), busy_timeout=busy_timeout, create=create, read_only=read_only)
        sim_base = path
    adapter = _hypervisor(hypervisor, sim_base, hypervisor_timeout)
    try:
        async with log:
            ledger = Ledger(
                log, adapter,
                clock=lambda: datetime.now(timezone.utc),
                new_id=_time_ordered_id,
                hypervisor_timeout=hypervisor_timeout,
            )
            if isinstance(adapter, SimulatedHypervisor) and adapter is not hypervisor and not read_only:
                await _restore_simulator(ledger, adapter)
            yield ledger
    finally:
        await adapter.aclose()


def _time_ordered_id() -> str:
    """Return a new id: a UUID version 7 (RFC 9562) in 32 hex digits, which sorts by the millisecond it was made.

    Request ids key the history and outcome rows: ids that grow with time
    add each batch's keys at the end of those indexes, where random ones
    (version 4) dirtied a page of each index per request, every one
    written again at each commit.
    """
    return uuid7(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))


def uuid7(ms: int, rand: int) -> str:
    """Return, in 32 hex digits, the UUID version 7 of Unix millisecond `ms` and 80 random bits `rand`.

    Its 74 random bits are the top 12 of `rand` (rand_a) and the low 62 (rand_b).
    """
    ms &= (1 << 48) - 1
    return f"{ms << 80 | 7 << 76 | (rand >> 68) << 64 | 2 << 62 | rand & (1 << 62) - 1:032x}"


async def _restore_simulator(ledger: Ledger, sim: SimulatedHypervisor) -> None:
    """Start a simulator whose state file is missing as the ledger last recorded its domains.

    A ledger copied, moved or imported without the simulator's file would
    otherwise meet an empty simulated host that knows none of its domains.
    """
    if os.path.exists(sim.state_path):
        return
    views = await ledger.domains()
    domains = []
    for view in views:
        rows = [r for r in view.properties if lookup(r.property).kind is not Kind.RO_RUN]
        persistent = tuple((r.property, r.persistent) for r in rows if r.persistent is not None)
        live = tuple((r.property, r.live) for r in rows if r.live is not None)
        caps = tuple(view.capabilities.items())
        domains.append((
            DomainSpec(name=view.domain, uuid=view.uuid, guest_type=view.guest_type, config=persistent,
                       capabilities=caps),
            Observation(running=view.power_state == "running", live=live, capabilities=caps,
                        locked_trays=frozenset(view.locked_trays), persistent=persistent)))
    if await sim.restore(domains):
        _log.warning("the simulated hypervisor's state %s was missing: started it as the ledger last recorded "
                     "its %d domain%s", sim.state_path, len(domains), "" if len(domains) == 1 else "s")
