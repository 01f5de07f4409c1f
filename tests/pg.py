"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary directory, torn down after.

`cluster()` runs Debian's `postgresql-15` server binaries (`initdb`, `pg_ctl`)
as the `postgres` user when the tests run as root (both refuse to run as
root), listening only on a Unix socket inside the private temporary
directory, with `fsync` on.  It yields the DSN of an empty database and, at
the end, stops the server with `pg_ctl stop -m immediate` and removes the
directory.  Test code may run blocking subprocesses; only library code must
not block the event loop.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from typing import Iterator

__all__ = ["PG_VERSION", "PgUnavailableError", "find_bindir", "cluster", "create_database"]

#: The major version whose server binaries the tests use.
PG_VERSION = "15"
_DATABASE = "vmledger"


class PgUnavailableError(RuntimeError):
    """Raised when no PostgreSQL server binaries can be found or no cluster can be started."""


def find_bindir() -> str:
    """Return the directory holding `initdb` and `pg_ctl` of PostgreSQL 15.

    `PG_BINDIR` overrides the search; otherwise Debian's
    `/usr/lib/postgresql/15/bin` is used.

    Raises:
        PgUnavailableError: no such directory holds both programs.
    """
    candidates = [os.environ["PG_BINDIR"]] if os.environ.get("PG_BINDIR") else sorted(
        glob.glob(f"/usr/lib/postgresql/{PG_VERSION}/bin"))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, p), os.X_OK) for p in ("initdb", "pg_ctl")):
            return bindir
    raise PgUnavailableError(
        f"no PostgreSQL {PG_VERSION} server binaries (initdb, pg_ctl) in "
        f"{candidates or [f'/usr/lib/postgresql/{PG_VERSION}/bin']}")


def _free_port() -> int:
    # The server listens on a Unix socket only, whose file name carries the
    # port; a free TCP port keeps the name unique should TCP be switched on.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runner() -> tuple[list[str], pwd.struct_passwd | None]:
    """Return the command prefix that drops root to `postgres`, and that user (None when not root)."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as e:
        raise PgUnavailableError("running as root but there is no `postgres` user to run initdb as") from e
    return ["runuser", "-u", "postgres", "--"], user


def _run(cmd: list[str], log: str) -> None:
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        tail = ""
        with contextlib.suppress(OSError):
            with open(log, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-2000:]
        raise PgUnavailableError(
            f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()} {done.stdout.strip()}\n{tail}")


#: The `pg_ctl` command line of each running cluster's server, by the DSN `cluster` gave.
_SERVERS: dict[str, list[str]] = {}


def stop_server(dsn: str) -> None:
    """Stop the server of the cluster `cluster` gave `dsn` of, as a restart does (`start_server` starts it again)."""
    command = _SERVERS[dsn]
    _run([*command, "-m", "fast", "stop"], command[command.index("-l") + 1])


def start_server(dsn: str) -> None:
    """Start again the server `stop_server` stopped."""
    command = _SERVERS[dsn]
    _run([*command, "-t", "30", "start"], command[command.index("-l") + 1])


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a private PostgreSQL cluster; yield the DSN of its empty database `vmledger`.

    Raises:
        PgUnavailableError: the binaries are missing or the server did not start.
    """
    bindir = find_bindir()
    prefix, user = _runner()
    root = tempfile.mkdtemp(prefix="vmledger-pg-")
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    port = _free_port()
    started = False
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o700)
        _run([*prefix, os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
              "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"], log)
        options = (f"-c listen_addresses='' -c unix_socket_directories='{root}' -p {port} "
                   "-c fsync=on -c synchronous_commit=on -c max_connections=200")
        _run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-o", options,
              "-w", "-t", "30", "start"], log)
        started = True
        _run([*prefix, os.path.join(bindir, "createdb"), "-h", root, "-p", str(port),
              "-U", "postgres", _DATABASE], log)
        dsn = f"postgresql://postgres@/{_DATABASE}?host={root}&port={port}"
        _SERVERS[dsn] = [*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log, "-o", options, "-w"]
        yield dsn
    finally:
        if started:
            subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate",
                            "-w", "stop"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(dsn: str, name: str, *, icu_locale: str | None = None, encoding: str | None = None) -> str:
    """Create the empty database `name` on the cluster of `dsn`; return its DSN.

    With `icu_locale` (such as `en-US`) its text sorts by that ICU locale
    rather than bytewise, as production databases often do; with `encoding`
    (such as `SQL_ASCII`) it stores text in that encoding.  Runs `createdb`
    (a client, so no user switch) over the cluster's Unix socket.
    """
    parts = urllib.parse.urlsplit(dsn)
    query = dict(urllib.parse.parse_qsl(parts.query))
    locale = ["--template=template0", "--locale-provider=icu", f"--icu-locale={icu_locale}"] if icu_locale else []
    if encoding:
        locale = [*(locale or ["--template=template0"]), f"--encoding={encoding}", "--locale=C"]
    done = subprocess.run(
        [os.path.join(find_bindir(), "createdb"), "-h", query["host"], "-p", query["port"],
         "-U", parts.username or "postgres", *locale, name],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise PgUnavailableError(f"createdb {name} exited {done.returncode}: {done.stderr.strip()}")
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
