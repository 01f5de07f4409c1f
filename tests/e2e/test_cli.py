"""The CLI contract, end to end on a fresh SQLite file with the simulated hypervisor."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from vmledger.cli import main

MiB, GiB = 2**20, 2**30


class Cli:
    """Runs `vmledger` in-process against one database and captures what it prints."""

    def __init__(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = db
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--db", self.db, "--timeout", "0.5", *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> Any:
        code, out, err = self(*args, "--json")
        assert err == ""
        return code, json.loads(out)

    def head(self) -> int:
        _, out, _ = self("events")
        return len(out.splitlines())


@pytest.fixture
def cli(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Return a CLI on a fresh ledger where `web` (PV, CD-ROM hdc) and `db` (HVM) run."""
    c = Cli(f"sqlite:///{tmp_path}/ledger.db", capsys)
    assert c("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
             "--vcpus", "2", "--max-vcpus", "4", "--cdrom", "hdc")[0] == 0
    assert c("define", "db", "--type", "hvm", "--memory", "1GiB", "--max-memory", "4GiB",
             "--vcpus", "2", "--max-vcpus", "4")[0] == 0
    assert c("start", "web")[0] == 0
    assert c("start", "db")[0] == 0
    return c


def test_short_balloon_is_partial_and_drifts(cli: Cli) -> None:
    """A memory increase larger than the host pool applies persistently and partly live."""
    assert cli("sim", "host-free", "100MiB")[0] == 0
    code, out = cli.json("set", "web", "memory", "1224MiB")
    assert code == 3
    assert out["outcomes"] == {
        "persistent": {"status": "applied", "value": 1224 * MiB, "reason": None, "message": None},
        "live": {"status": "partial", "value": 1124 * MiB, "reason": None,
                 "message": out["outcomes"]["live"]["message"]},
    }
    assert (out["domain"], out["property"], out["requested"], out["scope"]) == ("web", "memory", 1224 * MiB, "both")
    _, drift = cli.json("drift", "web")
    assert [(d["property"], d["cause"], d["request_id"], d["persistent"], d["live"]) for d in drift] == [
        ("memory", "partial", out["request_id"], 1224 * MiB, 1124 * MiB)]


def test_hvm_memory_refused_until_hotplug(cli: Cli) -> None:
    """An HVM guest without hotplug refuses a live memory change until the capability appears."""
    code, out = cli.json("set", "db", "memory", "2GiB", "--scope", "live")
    assert (code, list(out["outcomes"]), out["outcomes"]["live"]["status"], out["outcomes"]["live"]["reason"]) == (
        3, ["live"], "refused", "guest_unsupported")
    assert cli.json("get", "db", "memory", "--scope", "persistent")[1]["value"] == GiB
    code, out = cli.json("set", "db", "memory", "2GiB", "--scope", "both")
    assert (code, out["outcomes"]["persistent"]["status"], out["outcomes"]["live"]["status"]) == (3, "applied", "refused")
    assert [(d["property"], d["cause"]) for d in cli.json("drift", "db")[1]] == [("memory", "refused")]
    assert cli("sim", "capability", "db", "memory_hotplug", "on")[0] == 0
    code, out = cli.json("set", "db", "memory", "2GiB", "--scope", "live")
    assert (code, out["outcomes"]["live"]["status"], out["outcomes"]["live"]["value"]) == (0, "applied", 2 * GiB)
    assert cli.json("drift", "db")[1] == []


def test_max_memory_needs_restart(cli: Cli) -> None:
    """Max memory is refused live, applies persistently, and drifts until the domain restarts."""
    code, out = cli.json("set", "web", "max_memory", "8GiB", "--scope", "live")
    assert (code, out["outcomes"]["live"]["status"], out["outcomes"]["live"]["reason"]) == (3, "refused", "requires_restart")
    code, out = cli.json("set", "web", "max_memory", "8GiB", "--scope", "persistent")
    assert (code, out["outcomes"]["persistent"]["status"]) == (0, "applied")
    assert [(d["property"], d["cause"]) for d in cli.json("drift", "web")[1]] == [("max_memory", "requires_restart")]
    assert cli("stop", "web")[0] == 0
    assert cli("start", "web")[0] == 0
    assert cli.json("drift", "web")[1] == []
    assert cli.json("get", "web", "max_memory", "--scope", "live")[1] == {
        "domain": "web", "property": "max_memory", "scope": "live", "value": 8 * GiB}


def test_locked_tray_and_read_only_are_recorded(cli: Cli) -> None:
    """A locked tray refuses a media change until unlocked, and show learns the lock from the refusal and its end from the change; a read-only property is refused and recorded."""
    assert cli("sim", "lock-tray", "web", "hdc")[0] == 0
    code, out = cli.json("set", "web", "media:hdc", "/iso/b.iso")
    assert (code, out["outcomes"]["live"]["status"], out["outcomes"]["live"]["reason"]) == (3, "refused", "tray_locked")
    assert cli.json("show", "web")[1]["locked_trays"] == ["hdc"]
    assert cli("sim", "unlock-tray", "web", "hdc")[0] == 0
    code, out = cli.json("set", "web", "media:hdc", "/iso/b.iso")
    assert (code, out["outcomes"]["live"]) == (0, {"status": "applied", "value": "/iso/b.iso", "reason": None, "message": None})
    assert cli.json("show", "web")[1]["locked_trays"] == []
    assert cli("observe", "web") == (0, "nothing new\n", "")
    code, out = cli.json("set", "web", "power_state", "off")
    assert code == 3
    assert {s: o["reason"] for s, o in out["outcomes"].items()} == {"persistent": "read_only", "live": "read_only"}
    assert [r["property"] for r in cli.json("history", "web")[1]][-1] == "power_state"


def test_stopped_domain_scopes(cli: Cli) -> None:
    """On a stopped domain `both` concerns only the persistent config and `live` is refused."""
    assert cli("stop", "db")[0] == 0
    code, out = cli.json("set", "db", "vcpus", "3")
    assert (code, list(out["outcomes"]), out["outcomes"]["persistent"]["status"]) == (0, ["persistent"], "applied")
    code, out = cli.json("set", "db", "vcpus", "3", "--scope", "live")
    assert (code, out["outcomes"]["live"]["status"], out["outcomes"]["live"]["reason"]) == (3, "refused", "domain_not_running")


@pytest.mark.parametrize("args", [
    ("nope", "memory", "1GiB"),
    ("web", "nope", "1"),
    ("web", "memory", "abc"),
    ("web", "memory", "-5"),
    ("web", "memory", "1GiB", "--scope", "bad"),
    ("web", "media:hdx", "/iso/a.iso"),
    ("web", "vcpus", "1.5"),
], ids=["unknown-domain", "unknown-property", "not-a-size", "negative", "bad-scope", "other-device", "fraction"])
def test_invalid_input_writes_nothing(cli: Cli, args: tuple[str, ...]) -> None:
    """Invalid input exits 2 with one line on stderr and leaves the log as it was."""
    before = cli.head()
    code, out, err = cli("set", *args)
    assert (code, out, len(err.splitlines()), err.startswith("vmledger: error: ")) == (2, "", 1, True)
    assert cli.head() == before


def test_domains_named_dot_and_dot_dot_are_domains_like_any_other(cli: Cli) -> None:
    """Names `.` and `..` are valid, and every command reaches them, never another domain or another path.

    Remotely, each is one path segment of a URL, which clients would otherwise resolve away.
    """
    for name, vcpus in ((".", 1), ("..", 2)):
        assert cli("define", name, "--type", "pv", "--memory", "1GiB", "--max-memory", "2GiB",
                   "--vcpus", str(vcpus), "--max-vcpus", "4")[0] == 0
        assert cli("start", name)[0] == 0
        code, out = cli.json("set", name, "vcpus", "3")
        assert (code, out["domain"], out["outcomes"]["live"]["status"]) == (0, name, "applied")
        assert cli.json("get", name, "vcpus")[1]["value"] == 3
        code, view = cli.json("show", name)
        assert (code, view["domain"], view["power_state"]) == (0, name, "running")
        code, diff = cli.json("diff", name, "--from", "1")
        assert (code, diff["domain"]) == (0, name)
        assert [r["domain"] for r in cli.json("history", name)[1]] == [name]
        assert cli("stop", name)[0] == 0
        assert cli("undefine", name)[0] == 0
    code, _, err = cli("get", "web", "..")
    assert (code, err.startswith("vmledger: error: unknown property '..' (known: ")) == (2, True)
    assert [v["domain"] for v in cli.json("list")[1]] == ["db", "web"]


@pytest.mark.parametrize("state", ["{}", "[]", '{"host_free": 5, "domains": {"web": 3}}', "not JSON"])
def test_a_damaged_simulator_state_fails_a_request_with_its_outcomes_never_leaves_it_in_flight(
        cli: Cli, state: str) -> None:
    """A state file that is no simulator state, JSON or not, is the hypervisor failing: both scopes `failed`, exit 3."""
    path = cli.db.removeprefix("sqlite:///") + ".sim.json"
    with open(path, "w", encoding="utf-8") as f:
        f.write(state)
    code, out = cli.json("set", "web", "vcpus", "3")
    assert (code, {s: (o["status"], o["reason"]) for s, o in out["outcomes"].items()}) == (
        3, {"persistent": ("failed", "hypervisor_error"), "live": ("failed", "hypervisor_error")})
    assert "is damaged" in out["outcomes"]["live"]["message"]
    code, _, err = cli("observe", "web")
    assert (code, err.startswith("vmledger: simulator state ")) == (1, True)


def test_an_altered_export_is_refused_as_bad_input_naming_its_line(cli: Cli, tmp_path: Any) -> None:
    """Importing an export whose chain breaks exits 2 naming the file's line, not 4 "ledger damaged"; nothing is written."""
    _, out, _ = cli("export")
    lines = out.splitlines()
    lines[2] = lines[2].replace('"vcpus":2', '"vcpus":3', 1)
    assert lines[2] != out.splitlines()[2]
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join(lines) + "\n", encoding="utf-8")
    empty = Cli(f"sqlite:///{tmp_path}/empty.db", cli.capsys)
    assert empty("init")[0] == 0
    code, out, err = empty("import", str(altered))
    assert (code, out, err) == (2, "", "vmledger: error: line 3: the export is damaged at position 3: "
                                          "hash does not match the stored event\n")
    assert empty.head() == 0


def test_export_of_an_event_that_is_no_json_names_it_in_one_line(cli: Cli) -> None:
    """An event whose stored data was made no JSON behind the ledger's back stops `export` with one line naming it."""
    with contextlib.closing(sqlite3.connect(cli.db.removeprefix("sqlite:///"))) as conn:
        conn.execute("UPDATE events SET data = 'not json' WHERE position = 2")
        conn.commit()
    code, out, err = cli("export")
    assert (code, len(out.splitlines()), err.startswith("vmledger: stored DomainDefined at position 2 does not decode: "),
            len(err.splitlines())) == (1, 1, True, 1)


def test_a_file_that_is_not_what_a_command_needs_is_told_in_one_line(cli: Cli, tmp_path: Any) -> None:
    """A directory to import, a directory to plot into that is missing, a demo kept where a file is: exit 2, one line.

    An export read through a pipe (`import <(zcat export.gz)`) is a file like any other.
    """
    import os
    import threading

    (tmp_path / "a-file").write_text("")
    runs = [cli("import", str(tmp_path)), cli("plot", "web", "memory", "-o", str(tmp_path / "none" / "x.svg")),
            main_run(["demo", "--keep", str(tmp_path / "a-file")], cli.capsys)]
    assert [(code, out, len(err.splitlines()), err.startswith("vmledger: error: ")) for code, out, err in runs] == [
        (2, "", 1, True)] * 3
    _, exported, _ = cli("export")
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    def write() -> None:
        with open(fifo, "w", encoding="utf-8") as f:
            f.write(exported)

    writer = threading.Thread(target=write)
    writer.start()
    code, out, err = Cli(f"sqlite:///{tmp_path}/copy.db", cli.capsys)("import", fifo)
    writer.join()
    assert (code, out, err) == (0, f"imported {len(exported.splitlines())} events; chain verified\n", "")


def main_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `vmledger ARGV` in-process, with no --db; return the exit code and what it printed."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_simulator_state_left_beside_a_new_ledger_is_named_when_it_refuses_a_domain(
        cli: Cli, tmp_path: Any) -> None:
    """A ledger made afresh where an old simulator state stays: `define` of a name it holds says where it is kept."""
    import os

    db = str(tmp_path / "ledger.db")
    for leftover in (db, db + "-wal", db + "-shm"):
        if os.path.exists(leftover):
            os.remove(leftover)
    code, _, err = cli("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
                       "--vcpus", "2", "--max-vcpus", "4")
    assert (code, len(err.splitlines()), f"is in {db}.sim.json (delete that file" in err) == (1, 1, True)
    os.remove(db + ".sim.json")
    assert cli("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
               "--vcpus", "2", "--max-vcpus", "4")[0] == 0


def test_projection_rows_that_are_no_json_are_named_in_one_line_and_a_rebuild_mends_them(cli: Cli) -> None:
    """A history row or a domain state made no JSON behind the ledger's back: one line (exit 1), never an internal error."""
    assert cli("set", "web", "vcpus", "3")[0] == 0
    with contextlib.closing(sqlite3.connect(cli.db.removeprefix("sqlite:///"))) as conn:
        conn.execute("UPDATE history SET outcomes = 'oops'")
        conn.execute("UPDATE domains SET state = 'oops'")
        conn.commit()
    runs = [cli("history"), cli("show", "web"), cli("set", "web", "vcpus", "2")]
    assert [(code, out, err.split(" (")[0]) for code, out, err in runs] == [
        (1, "", "vmledger: a stored history row does not decode"),
        (1, "", "vmledger: a stored domain state does not decode"),
        (1, "", "vmledger: a stored domain state does not decode")]
    assert (cli("verify")[0], cli("rebuild")[0], cli("verify")[0], cli("show", "web")[0]) == (4, 0, 0, 0)


def test_repeated_request_id_appends_nothing(cli: Cli) -> None:
    """Repeating a request id prints the first outcome again and appends nothing."""
    first = cli.json("set", "web", "vcpus", "3", "--request-id", "r-1")
    head = cli.head()
    code, out, err = cli("set", "web", "vcpus", "3", "--request-id", "r-1", "--json")
    assert ((code, json.loads(out)), cli.head()) == (first, head)
    assert err == "vmledger: request id r-1 was recorded before: its first outcome again, nothing appended\n"
    code, _, err = cli("set", "web", "vcpus", "4", "--request-id", "r-1")
    assert (code, cli.head(), "already used" in err) == (2, head, True)


def test_out_of_band_balloon_is_external(cli: Cli) -> None:
    """A balloon change behind the ledger's back, once observed, drifts with cause external."""
    assert cli("sim", "balloon", "web", "900MiB")[0] == 0
    assert cli("observe", "web")[0] == 0
    drift = cli.json("drift", "web")[1]
    assert [(d["property"], d["cause"], d["live"], d["request_id"]) for d in drift] == [
        ("memory", "external", 900 * MiB, None)]
    code, out, _ = cli("observe", "web")
    assert (code, out.strip()) == (0, "nothing new")


def test_out_of_band_config_change_is_observed_into_the_persistent_config(cli: Cli) -> None:
    """A config change behind the ledger's back, once observed, is the persistent value and drifts external while running."""
    assert cli("sim", "config", "web", "vcpus", "3")[:2] == (0, "sim config: done\n")
    assert cli("sim", "config", "web", "memory", "8GiB") == (
        1, "", "vmledger: memory 8GiB is outside its bounds in the config of 'web'\n")
    code, out = cli.json("observe", "--principal", "bob")
    assert (code, [(e["type"], e["data"], e["metadata"]["principal"]) for e in out]) == (
        0, [("PersistentValueObserved", {"previous": 2, "property": "vcpus", "value": 3}, "bob")])
    drift = cli.json("drift")[1]
    assert [(d["domain"], d["property"], d["cause"], d["persistent"], d["live"], d["request_id"]) for d in drift] == [
        ("web", "vcpus", "external", 3, 2, None)]
    assert cli.json("get", "web", "vcpus", "--scope", "persistent")[1]["value"] == 3
    assert cli("observe")[:2] == (0, "nothing new\n")


#: How a command ends on each signal: 130 on Ctrl-C (SIGINT); on SIGTERM, dead of it once it ended the same way.
_ENDS = {signal.SIGINT: 130, signal.SIGTERM: -signal.SIGTERM}


@pytest.mark.parametrize("sig", _ENDS)
def test_watch_records_an_out_of_band_balloon_and_stops_on_interrupt(cli: Cli, sig: signal.Signals) -> None:
    """`vmledger watch --interval` on the simulator records a balloon change by its sweeps, a line each, and stops on SIGINT or SIGTERM."""
    proc = _interruptible([sys.executable, "-m", "vmledger.cli", "--db", cli.db, "watch", "--interval", "0.1"])
    try:
        assert cli("sim", "balloon", "web", "900MiB")[0] == 0
        deadline = time.monotonic() + 30
        while cli.json("drift", "web")[1] == [] and time.monotonic() < deadline:
            time.sleep(0.05)
        drift = cli.json("drift", "web")[1]
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert [(d["property"], d["cause"], d["live"], d["request_id"]) for d in drift] == [
        ("memory", "external", 900 * MiB, None)]
    lines = out.splitlines()
    assert (proc.returncode, lines[0], [line.split(" ", 1)[1] for line in lines[1:]], err) == (
        _ENDS[sig], f"watching every domain of sim in {cli.db}: now, as announced, and every 0.1s; interrupt to stop",
        ["LiveValueObserved  web memory live 900MiB (the ledger had 1GiB)"], "")


def _interruptible(argv: list[str]) -> subprocess.Popen[str]:
    """Start a child that dies of SIGINT and SIGTERM as a shell-started one does (a background run ignores SIGINT, and children inherit that)."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=_default_signals)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig", _ENDS)
def test_a_set_interrupted_while_the_hypervisor_works_says_its_request_stays_in_flight(
        cli: Cli, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM on a `set` waiting on the hypervisor names the request it leaves in flight."""
    assert cli("sim", "fail", "web", "memory", "timeout")[0] == 0  # the next live change hangs until the timeout
    proc = _interruptible([sys.executable, "-m", "vmledger.cli", "--db", cli.db, "--timeout", "60",
                           "set", "web", "memory", "2GiB", "--request-id", "cut-short"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not cli.json("history", "web", "memory")[1]:
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    (record,) = cli.json("history", "web", "memory")[1]
    assert (proc.returncode, out, err) == (_ENDS[sig], "", "vmledger: request cut-short is recorded, but was interrupted "
                                           "before its outcomes were all recorded; what is missing stays in flight "
                                           "until observe resolves it\n")
    assert (record["request_id"], record["outcomes"]["live"]["status"]) == ("cut-short", "in_flight")


@pytest.mark.parametrize("interval,message", [
    ("nan", "the watch interval must be a finite number of seconds above 0, not nan"),
    ("0", "the watch interval must be a finite number of seconds above 0, not 0.0"),
    ("-1", "the watch interval must be a finite number of seconds above 0, not -1.0"),
    ("inf", "the watch interval must be a finite number of seconds above 0, not inf"),
    ("1m", "invalid number of seconds '1m'"),
])
def test_watch_interval_must_be_a_positive_number_of_seconds(cli: Cli, interval: str, message: str) -> None:
    """`watch --interval` other than a finite number of seconds above 0 exits 2 with one line and writes nothing."""
    before = cli.head()
    assert cli("watch", "--interval", interval) == (
        2, "", f"vmledger: error: argument --interval: {message} (see 'vmledger watch --help')\n")
    assert cli.head() == before


def test_hypervisor_timeout_fails_and_never_stays_in_flight(cli: Cli) -> None:
    """A hypervisor that does not answer records a failed live outcome with reason timeout."""
    assert cli("sim", "fail", "web", "memory", "timeout")[0] == 0
    code, out = cli.json("set", "web", "memory", "2GiB", "--scope", "live")
    assert (code, out["outcomes"]["live"]["status"], out["outcomes"]["live"]["reason"],
            out["outcomes"]["live"]["value"]) == (3, "failed", "timeout", GiB)
    statuses = [o["status"] for r in cli.json("history")[1] for o in r["outcomes"].values()]
    assert "in_flight" not in statuses
    assert [(d["property"], d["cause"]) for d in cli.json("drift", "web")[1]] == []


def test_history_and_drift_as_of(cli: Cli) -> None:
    """History lists requests oldest first with principals; drift as of an earlier position shows the past."""
    cli("sim", "host-free", "100MiB")
    _, partial = cli.json("set", "web", "memory", "1224MiB", "--principal", "alice", "--reason", "cache")
    then = cli.head()
    cli("sim", "host-free", "1GiB")
    cli.json("set", "web", "memory", "1224MiB", "--scope", "live", "--principal", "bob")
    assert cli.json("drift", "web")[1] == []
    history = cli.json("history", "web")[1]
    assert [(r["principal"], r["scope"], r["reason"]) for r in history] == [("alice", "both", "cache"), ("bob", "live", None)]
    assert [r["principal"] for r in cli.json("history", "--principal", "bob")[1]] == ["bob"]
    past = cli.json("drift", "--as-of", str(then))[1]
    assert [(d["domain"], d["property"], d["cause"], d["request_id"]) for d in past] == [
        ("web", "memory", "partial", partial["request_id"])]


def test_events_are_json_lines(cli: Cli) -> None:
    """`events` prints one JSON object per event with the contracted keys, in position order."""
    _, out, _ = cli("events", "--from", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["position"] for e in lines] == list(range(3, 3 + len(lines)))
    assert set(lines[0]) == {"position", "stream", "version", "type", "data", "metadata", "recorded_at"}
    assert lines[0]["type"] == "DomainStarted"


def test_rebuild_verify_and_tampering(cli: Cli, tmp_path: Any) -> None:
    """Rebuild leaves every row as it was; verify passes, and exits 4 naming an edited event."""
    cli.json("set", "web", "memory", "2GiB")
    db = str(tmp_path / "ledger.db")

    def rows() -> list[Any]:
        with sqlite3.connect(db) as conn:
            return [conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                    for t in ("domains", "persistent", "live", "drift", "history")]

    before = rows()
    assert cli("rebuild")[0] == 0
    assert rows() == before
    assert cli("verify")[0] == 0
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        (position,) = conn.execute("SELECT min(position) FROM events WHERE type = 'MemoryChangeRequested'").fetchone()
        conn.execute("UPDATE events SET data = replace(data, '2147483648', '3221225472') WHERE position = ?",
                     (position,))
    code, _, err = cli("verify")
    assert (code, f"position {position}:" in err, len(err.splitlines())) == (4, True, 1)


def test_verify_checkpoint_file(cli: Cli, tmp_path: Any) -> None:
    """`verify --checkpoint FILE` checks in full and saves; the next run checks since it and saves anew."""
    file = tmp_path / "ledger.checkpoint"
    path = str(file)
    head = cli.head()
    first = cli("verify", "--checkpoint", path)
    saved = json.loads(file.read_text(encoding="utf-8"))
    cli.json("set", "web", "memory", "2GiB")
    second = cli("verify", "--checkpoint", path)
    assert (first, second, saved["position"], json.loads(file.read_text(encoding="utf-8"))["position"]) == (
        (0, f"ok: {head} events, chain intact, projections equal a rebuild (checked in full); "
            f"checkpoint saved to {path}\n", ""),
        (0, f"ok: {head + 3} events, chain intact, projections equal a rebuild (checked since the checkpoint "
            f"at position {head}); checkpoint saved to {path}\n", ""),
        head, head + 3)


def test_verify_checks_in_full_since_a_checkpoint_of_other_fold_rules(cli: Cli, tmp_path: Any) -> None:
    """A checkpoint file an older vmledger saved (it names no rules, its digests are of that version's rows) is checked in full past its hash, and replaced by one naming this version's rules."""
    file = tmp_path / "ledger.checkpoint"
    head = cli.head()
    assert cli("verify", "--checkpoint", str(file))[0] == 0
    saved = json.loads(file.read_text(encoding="utf-8"))
    older = {**saved, "domains": {uuid: "0" * 64 for uuid in saved["domains"]}}
    del older["rules"]
    file.write_text(json.dumps(older), encoding="utf-8")
    code, out, err = cli("verify", "--checkpoint", str(file))
    assert (code, out, err, json.loads(file.read_text(encoding="utf-8"))) == (
        0, f"ok: {head} events, chain intact, projections equal a rebuild (checked in full, as the checkpoint's "
           f"digests are of rows another version's fold rules made); checkpoint saved to {file}\n", "", saved)


@pytest.mark.parametrize("text", ["", "{}", "not json", '{"format":"vmledger-checkpoint/1","position":-1}'])
def test_verify_refuses_a_damaged_checkpoint_file_and_keeps_it(cli: Cli, tmp_path: Any, text: str) -> None:
    """A file that holds no checkpoint exits 2 with one line, and is left as it was."""
    path = tmp_path / "ledger.checkpoint"
    path.write_text(text, encoding="utf-8")
    code, out, err = cli("verify", "--checkpoint", str(path))
    assert (code, out, len(err.splitlines()), path.read_text(encoding="utf-8")) == (2, "", 1, text)


@pytest.mark.parametrize("args", [["--from", "99"], ["--from", "-1"], ["--from", "1", "--checkpoint", "c"]])
def test_verify_refuses_a_bad_start(cli: Cli, args: list[str]) -> None:
    """A start past the head, a negative one, or both a start and a checkpoint exit 2 with one line."""
    code, out, err = cli("verify", *args)
    assert (code, out, len(err.splitlines())) == (2, "", 1)


def test_console_script_errors_are_one_line(tmp_path: Any) -> None:
    """The installed `vmledger` script exits 2 with one line and no traceback for an unknown domain."""
    assert main(["--db", str(tmp_path / "l.db"), "init"]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "vmledger.cli", "--db", str(tmp_path / "l.db"), "set", "nope", "memory", "1GiB"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", "vmledger: error: unknown domain 'nope'\n")


def test_vmledger_loop_picks_the_loop_and_an_unknown_one_creates_nothing(
        tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A command answers the same on either loop; an unknown VMLEDGER_LOOP exits 2 with one line, no file made."""
    db = tmp_path / "l.db"
    monkeypatch.setenv("VMLEDGER_LOOP", "fast")
    assert (main(["--db", str(db), "init"]), capsys.readouterr(), db.exists()) == (
        2, ("", "vmledger: error: VMLEDGER_LOOP must be one of uvloop, asyncio, not 'fast'\n"), False)
    answers = []
    for loop in ("asyncio", "uvloop"):
        monkeypatch.setenv("VMLEDGER_LOOP", loop)
        path = tmp_path / f"{loop}.db"
        codes = [main(["--db", str(path), *args]) for args in (
            ["init"], ["define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB", "--vcpus", "1",
             "--max-vcpus", "2"], ["start", "web"])]
        capsys.readouterr()
        codes.append(main(["--db", str(path), "set", "web", "memory", "2GiB", "--json"]))
        answers.append((codes, json.loads(capsys.readouterr().out)["outcomes"]))
    assert answers[0] == answers[1] == ([0, 0, 0, 0], {
        scope: {"status": "applied", "value": 2 * GiB, "reason": None, "message": None}
        for scope in ("persistent", "live")})


def test_demo_runs(tmp_path: Any) -> None:
    """`vmledger demo` plays the story in a fresh ledger and prints a verified report."""
    proc = subprocess.run([sys.executable, "-m", "vmledger.cli", "demo"], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "cause partial" in proc.stdout and "hash chain intact" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_observe_resolves_an_abandoned_request(tmp_path: Any) -> None:
    """A request whose caller died after `…Requested` is resolved by observe from the real live value."""
    import asyncio
    from datetime import datetime, timedelta, timezone

    import vmledger
    from vmledger.eventstore.decisions import SetRequest, decide_set
    from vmledger.eventstore.log import Metadata

    db = str(tmp_path / "l.db")

    async def go() -> tuple:
        async with vmledger.open(db, hypervisor_timeout=0.1) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=2)
            await ledger.start("web")
            state = await ledger._state("web")
            # What a caller killed during the hypervisor call leaves behind: Requested, nothing more.
            request = SetRequest(request_id="orphan", domain="web", property="memory", value=2 * GiB,
                                 scope="live", principal="alice")
            decision = decide_set(request, state)
            await ledger.log.append(state.uuid, state.version, decision.events, Metadata(principal="alice"),
                                    now=datetime.now(timezone.utc) - timedelta(seconds=5))
            in_flight = (await ledger.request("orphan"))["outcomes"]["live"]["status"]
            await ledger.hypervisor.apply_live("web", "memory", 2 * GiB)  # the call did reach the hypervisor
            await ledger.observe("web")
            record = await ledger.request("orphan")
            return in_flight, record["outcomes"]["live"], [d.to_dict() for d in await ledger.drift("web")]

    in_flight, live, drift = asyncio.run(go())
    assert (in_flight, live["status"], live["value"], drift) == ("in_flight", "applied", 2 * GiB, [
        {"domain": "web", "property": "memory", "persistent": GiB, "live": 2 * GiB, "cause": "live_only",
         "request_id": "orphan", "since_position": drift[0]["since_position"], "since": drift[0]["since"]}])


def test_a_request_id_repeated_while_its_request_is_in_flight_says_so(tmp_path: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Repeating the id of a request still in flight prints its record so far, not "its first outcome", and appends nothing."""
    import asyncio
    from datetime import datetime, timezone

    import vmledger
    from vmledger.eventstore.decisions import SetRequest, decide_set
    from vmledger.eventstore.log import Metadata

    db = str(tmp_path / "l.db")

    async def go() -> int:
        async with vmledger.open(db) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=2)
            await ledger.start("web")
            state = await ledger._state("web")
            request = SetRequest(request_id="slow", domain="web", property="memory", value=2 * GiB,
                                 scope="live", principal="alice")
            await ledger.log.append(state.uuid, state.version, decide_set(request, state).events,
                                    Metadata(principal="alice"), now=datetime.now(timezone.utc))
            return await ledger.log.head()

    head = asyncio.run(go())
    capsys.readouterr()
    code = main(["--db", db, "set", "web", "memory", "2GiB", "--scope", "live", "--request-id", "slow"])
    out, err = capsys.readouterr()
    assert (code, "in_flight" in out, err) == (3, True, "vmledger: request id slow was recorded before: its record "
                                                        "so far, still in flight, nothing appended\n")
    assert Cli(f"sqlite:///{db}", capsys).head() == head


def test_diff_revert_and_audit_commands(cli: Cli) -> None:
    """`diff` lists a request's changes, `revert --to` undoes them with exit 0, and `audit` counts both requests (issue 17)."""
    a = cli.head()
    assert cli("set", "web", "memory", "2GiB", "--principal", "bob")[0] == 0
    diff = cli.json("diff", "web", "--from", str(a))
    revert = cli.json("revert", "web", "--to", str(a), "--principal", "bob")
    audit = cli.json("audit", "--domain", "web", "--principal", "bob")
    assert (diff[0], [(c["scope"], c["property"], c["before"], c["after"], c["event"]) for c in diff[1]["changes"]]) == (
        0, [("persistent", "memory", GiB, 2 * GiB, "MemoryChangeApplied"),
            ("live", "memory", GiB, 2 * GiB, "MemoryChangeApplied")])
    assert (revert[0], [(s["property"], s["scope"], s["value"]) for s in revert[1]["steps"]],
            [(r["principal"], r["reason"]) for r in revert[1]["records"]]) == (
        0, [("memory", "both", GiB)], [("bob", f"revert to #{a}")])
    assert (audit[0], [(r["property"], r["scope"], r["requests"], r["applied"]) for r in audit[1]["requests"]]) == (
        0, [("memory", "live", 2, 2), ("memory", "persistent", 2, 2)])
