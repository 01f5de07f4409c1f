"""What a new user types first, end to end through the CLI (issue 18)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys

import pytest

from vmledger.adapters.simulated import SimulatedHypervisor
from vmledger.cli import main
from vmledger.ledger import default_principal

MiB, GiB = 2**20, 2**30
ROOT = pathlib.Path(__file__).resolve().parents[2]


class Cli:
    """Runs `vmledger` in-process, as typed at a shell whose current directory is `cwd`."""

    def __init__(self, cwd: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cwd = cwd
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Return a CLI run in an empty directory, without VMLEDGER_* in the environment."""
    for name in ("VMLEDGER_DB", "VMLEDGER_HYPERVISOR", "VMLEDGER_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return Cli(tmp_path, capsys)


DEFINE_WEB = ("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
              "--vcpus", "2", "--max-vcpus", "4", "--cdrom", "hdc")


# 1. A read never creates a ledger.


@pytest.mark.parametrize("command", [
    ("drift",), ("list",), ("show", "web"), ("get", "web", "memory"), ("history",), ("events",),
    ("export",), ("verify",), ("set", "web", "memory", "2GiB"), ("start", "web"), ("observe",), ("rebuild",),
    ("sim", "host-free", "1GiB"),
])
def test_mistyped_db_is_an_error_naming_the_path(cli: Cli, command: tuple[str, ...]) -> None:
    """A command on a ledger that does not exist exits 2, names the path, and creates no file (issue 18)."""
    code, out, err = cli("--db", "tuor.db", *command)
    assert (code, out) == (2, "")
    assert err == ("vmledger: error: no ledger at tuor.db: the file does not exist "
                   "(create it with 'vmledger --db tuor.db init', or check --db and VMLEDGER_DB)\n")
    assert sorted(os.listdir(cli.cwd)) == []


def test_list_without_vmledger_db_creates_nothing(cli: Cli) -> None:
    """`list` with neither --db nor VMLEDGER_DB names the default file and leaves the directory empty (issue 18)."""
    code, _, err = cli("list")
    assert (code, "no ledger at vmledger.db" in err, os.listdir(cli.cwd)) == (2, True, [])


def test_init_creates_once_and_writing_commands_create(cli: Cli) -> None:
    """`init` creates an empty ledger and says so, a second `init` changes nothing, and `define` creates one too."""
    assert cli("--db", "a.db", "init") == (0, "created an empty ledger at a.db\n", "")
    assert cli("--db", "a.db", "init") == (0, "a ledger exists already at a.db (0 events); nothing changed\n", "")
    assert cli("--db", "a.db", "list") == (0, "no domains\n", "")
    assert cli("--db", "b.db", *DEFINE_WEB)[0] == 0
    assert cli("--db", "b.db", "list") == (0, "web                  pv   shut off\n", "")


# 2. A read-only auditor reads.


def _as_auditor(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a process that may read the ledger but not write it or its directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VMLEDGER_DB", None)
    command = [sys.executable, "-m", "vmledger.cli", *args]
    if os.geteuid() == 0:
        # Root bypasses permissions: drop the capabilities that let it, and stay uid 0 so that
        # the interpreter (which may live under /root) still runs; the ledger belongs to nobody.
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *command]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _hand_over(directory: pathlib.Path) -> None:
    """Make `directory` and its files readable by all and writable by nobody but their new owner, `nobody`."""
    for path in (directory, *directory.iterdir()):
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if os.geteuid() != 0:
        for path in (*directory.iterdir(), directory):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)


@pytest.mark.parametrize("leftover", [False, True], ids=["clean", "wal-files-left"])
def test_read_only_auditor_reads_sqlite(cli: Cli, tmp_path: pathlib.Path, leftover: bool) -> None:
    """Every read command works with read permission alone on the file and its directory; a write is refused (issue 18)."""
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    db = str(ledger / "l.db")
    assert cli("--db", db, *DEFINE_WEB)[0] == 0
    assert cli("--db", db, "start", "web")[0] == 0
    assert cli("--db", db, "set", "web", "memory", "2GiB")[0] == 0
    expected = {c: cli("--db", db, *c.split())[1] for c in
                ("list", "show web", "drift", "history", "events", "get web memory", "export")}
    keep = sqlite3.connect(db) if leftover else None  # another process holds the ledger open: -wal, -shm exist
    if keep is not None:
        keep.execute("SELECT count(*) FROM events").fetchall()
    before = sorted(os.listdir(ledger))
    _hand_over(ledger)
    try:
        for command, out in expected.items():
            done = _as_auditor(["--db", db, *command.split()], tmp_path)
            assert (command, done.returncode, done.stdout, done.stderr) == (command, 0, out, "")
        done = _as_auditor(["--db", db, "verify"], tmp_path)
        assert (done.returncode, done.stdout) == (0, "ok: 6 events, chain intact, projections equal a rebuild\n")
        done = _as_auditor(["--db", db, "set", "web", "memory", "1GiB"], tmp_path)
        assert (done.returncode, "read-only" in done.stderr) == (1, True)
        assert sorted(os.listdir(ledger)) == before
    finally:
        if keep is not None:
            keep.close()


@pytest.mark.parametrize("wrong", [("--memory", "8GiB"), ("--vcpus", "9"), ("--cdrom", "hdc")],
                         ids=["memory-past-max", "vcpus-past-max", "cdrom-twice"])
def test_a_definition_the_ledger_refuses_creates_no_ledger(cli: Cli, wrong: tuple[str, str]) -> None:
    """`define` refused for its arguments (exit 2, nothing written) leaves no new ledger behind, as `import` does."""
    args = list(DEFINE_WEB)
    if wrong[0] == "--cdrom":
        args += wrong
    else:
        args[args.index(wrong[0]) + 1] = wrong[1]
    code, out, err = cli("--db", "typo.db", *args)
    assert (code, out, err.startswith("vmledger: error: "), os.listdir(cli.cwd)) == (2, "", True, [])


# 10. Loose arguments.


@pytest.mark.parametrize("url, hint", [
    ("sqlite:tour.db", "sqlite:///tour.db"),
    ("sqlite://tour.db", "sqlite:///tour.db"),
])
def test_sqlite_url_without_three_slashes_is_refused(cli: Cli, url: str, hint: str) -> None:
    """`--db sqlite:tour.db` is refused with the URL it probably meant, and makes no file (issue 18)."""
    code, out, err = cli("--db", url, *DEFINE_WEB)
    assert (code, out, os.listdir(cli.cwd)) == (2, "", [])
    assert err == (f"vmledger: error: malformed database URL '{url}': an SQLite URL has three slashes, "
                   f"e.g. {hint}\n")


@pytest.mark.parametrize("table,columns", [("invoices", "id INTEGER PRIMARY KEY"),
                                           ("events", "id INTEGER PRIMARY KEY, payload TEXT")])
def test_foreign_sqlite_database_is_left_alone(cli: Cli, table: str, columns: str) -> None:
    """A database that holds somebody else's tables is refused by writes and reads alike, and not changed (issue 18).

    So is one whose `events` table is not the log's (other columns).
    """
    conn = sqlite3.connect("other.sqlite")
    conn.execute(f"CREATE TABLE {table} ({columns})")
    conn.commit()
    conn.close()
    for command in (DEFINE_WEB, ("list",), ("init",)):
        code, out, err = cli("--db", "other.sqlite", *command)
        assert (code, out, err) == (2, "", "vmledger: error: other.sqlite is an SQLite database but not a vmledger "
                                           f"ledger (its tables: {table}); vmledger adds nothing to it\n")
    conn = sqlite3.connect("other.sqlite")
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [(table,)]
    conn.close()


def test_file_that_is_not_a_database_is_refused(cli: Cli) -> None:
    """A file that is not SQLite at all, or a directory, is refused in one line naming it, and left as it was (issue 18)."""
    pathlib.Path("notes.txt").write_text("x" * 200)
    code, out, err = cli("--db", "notes.txt", "list")
    assert (code, out, err.startswith("vmledger: notes.txt: the file is not an SQLite database")) == (1, "", True)
    pathlib.Path("a-directory").mkdir()
    code, out, err = cli("--db", "a-directory", "list")
    assert (code, out, err) == (1, "", "vmledger: a-directory is a directory, not a ledger's file\n")
    assert pathlib.Path("notes.txt").read_text() == "x" * 200


@pytest.fixture
def web(cli: Cli) -> Cli:
    """Return the CLI on `l.db`, where `web` runs."""
    assert cli("--db", "l.db", *DEFINE_WEB)[0] == 0
    assert cli("--db", "l.db", "start", "web")[0] == 0
    return cli


def test_drift_as_of_past_the_head_is_refused(web: Cli) -> None:
    """`drift --as-of` past the log's head is refused, as `verify --from` is (issue 18)."""
    assert web("--db", "l.db", "drift", "--as-of", "9999") == (
        2, "", "vmledger: error: position 9999 is past the head of the log (3)\n")
    assert web("--db", "l.db", "drift", "--as-of", "3") == (0, "no drift\n", "")


@pytest.mark.parametrize("as_of", ["-1", "+3", "1.5"])
def test_drift_as_of_a_bad_position_says_position(web: Cli, as_of: str) -> None:
    """`drift --as-of -1` is called an invalid position, not an invalid time (issue 18)."""
    code, out, err = web("--db", "l.db", "drift", "--as-of", as_of)
    assert (code, out) == (2, "")
    assert err == (f"vmledger: error: invalid log position '{as_of}': "
                   "use a whole number from 0 to 9223372036854775807, or an ISO 8601 time\n")


# 3. virsh habits.


@pytest.mark.parametrize("size, expected", [
    ("2G", 2 * GiB), ("2048M", 2 * GiB), ("2GiB", 2 * GiB), ("2g", 2 * GiB), ("3GB", 3 * 10**9),
    ("2000000KB", 2 * 10**9), ("2097152K", 2 * GiB), ("1.5G", 3 * GiB // 2),
])
def test_set_takes_libvirt_units(web: Cli, size: str, expected: int) -> None:
    """`set web memory 2G` and its siblings take libvirt's units, powers of 1024 and of 1000 as libvirt defines them (issue 18)."""
    code, out, err = web("--db", "l.db", "set", "web", "memory", size, "--config", "--json")
    assert (code, json.loads(out)["requested"], err) == (0, expected, "")


@pytest.mark.parametrize("size", ["2Gi", "2 G B", "2gigs", "0x10G"])
def test_ambiguous_sizes_are_refused_with_the_rule(web: Cli, size: str) -> None:
    """A size that is not a libvirt unit is refused with the rule, writing nothing (issue 18)."""
    assert web("--db", "l.db", "set", "web", "memory", size) == (2, "", (
        f"vmledger: error: invalid size '{size}': sizes are bytes (1073741824) or a number with a unit as libvirt "
        "takes them, in any case: K, M, G, T (or KiB, MiB, GiB, TiB) are powers of 1024, KB, MB, GB, TB powers "
        "of 1000; e.g. 512M, 2GiB, 8GB, 1.5G\n"))


@pytest.mark.parametrize("flags, scopes", [
    (("--config",), ["persistent"]), (("--live",), ["live"]), (("--config", "--live"), ["live", "persistent"]),
    (("--current",), ["live"]),
])
def test_virsh_scope_flags(web: Cli, flags: tuple[str, ...], scopes: list[str]) -> None:
    """virsh's --config, --live and --current name the scopes of a `set` as virsh means them (issue 18)."""
    code, out, _ = web("--db", "l.db", "set", "web", "vcpus", "3", *flags, "--json")
    assert (code, sorted(json.loads(out)["outcomes"])) == (0, scopes)


@pytest.mark.parametrize("flags, message", [
    (("--scope", "live", "--config"), "give --scope or --config/--live/--current, not both"),
    (("--current", "--live"), "--current cannot be combined with --config or --live"),
])
def test_conflicting_scope_flags_are_refused(web: Cli, flags: tuple[str, ...], message: str) -> None:
    """Scope flags that contradict each other are a usage error (issue 18)."""
    assert web("--db", "l.db", "set", "web", "vcpus", "3", *flags) == (2, "", f"vmledger: error: {message}\n")


def test_get_takes_virsh_scope_flags(web: Cli) -> None:
    """`get --config` reads the persistent config, as virsh's flag does (issue 18)."""
    assert web("--db", "l.db", "set", "web", "memory", "2G", "--config")[0] == 0
    assert web("--db", "l.db", "get", "web", "memory", "--config") == (0, "2GiB\n", "")
    assert web("--db", "l.db", "get", "web", "memory", "--live") == (0, "1GiB\n", "")


@pytest.mark.parametrize("args, message", [
    (("lsit",), "unknown command 'lsit': did you mean 'list'? (see 'vmledger --help')"),
    (("sim", "ballon", "web", "1G"), "unknown command 'ballon': did you mean 'balloon'? (see 'vmledger sim --help')"),
    (("set", "wbe", "memory", "2G"), "unknown domain 'wbe': did you mean 'web'?"),
    (("define", "x", "--type", "hmv"), "argument --type: invalid choice 'hmv': did you mean 'hvm'? "
                                        "(see 'vmledger define --help')"),
    (("set", "web", "memroy", "2G"), "unknown property 'memroy' (did you mean 'memory'? known: max_memory, "
                                     "max_vcpus, memory, memory_actual, numa_nodes, power_state, vcpus, media:DEVICE)"),
])
def test_typos_get_a_suggestion(web: Cli, args: tuple[str, ...], message: str) -> None:
    """An unknown command, choice, property or domain names the nearest known one (issue 18)."""
    assert web("--db", "l.db", *args) == (2, "", f"vmledger: error: {message}\n")


# 4. People read binary units.


def test_refusals_speak_binary_units_and_name_both_values(web: Cli) -> None:
    """A refused or partial outcome names the value kept or got and the value asked, in binary units (issue 18)."""
    assert web("--db", "l.db", "sim", "host-free", "100M")[0] == 0
    code, out, _ = web("--db", "l.db", "set", "web", "memory", "1224M", "--request-id", "r1")
    assert (code, out.splitlines()[1:]) == (3, [
        "    persistent applied   1224MiB",
        "    live       partial   got 1124MiB, asked 1224MiB  host had only 100MiB free"])
    code, out, _ = web("--db", "l.db", "set", "web", "memory", "100G", "--request-id", "r2")
    assert (code, out.splitlines()[1:]) == (3, [
        "    persistent refused   kept 1224MiB, asked 100GiB  out_of_range: memory 100GiB exceeds max_memory 4GiB",
        "    live       refused   kept 1124MiB, asked 100GiB  out_of_range: memory 100GiB exceeds max_memory 4GiB"])
    code, out, _ = web("--db", "l.db", "set", "web", "memory", "100G", "--json", "--request-id", "r3")
    assert json.loads(out)["outcomes"]["live"]["value"] == 1124 * MiB


# 5. What a serious tool does.


def test_version_and_python_dash_m(tmp_path: pathlib.Path) -> None:
    """`vmledger --version` and `python -m vmledger --version` print the version (issue 18)."""
    import vmledger

    done = subprocess.run([sys.executable, "-m", "vmledger", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout, done.stderr) == (0, f"vmledger {vmledger.__version__}\n", "")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_completes_commands_properties_and_choices(cli: Cli, shell: str) -> None:
    """The completion script completes commands, sim actions, options, properties and scope choices (issue 18)."""
    code, script, _ = cli("completion", shell)
    assert code == 0
    (cli.cwd / "c.sh").write_text(script.replace("autoload -U +X bashcompinit && bashcompinit\n", ""))
    probe = (
        'source ./c.sh; for line in "vmledger se" "vmledger sho" "vmledger sim ba" "vmledger set web mem" '
        '"vmledger set web memory 1G --sc" "vmledger set web memory 1G --scope "; do '
        'read -a COMP_WORDS <<< "$line"; [[ $line == *" " ]] && COMP_WORDS+=(""); '
        'COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _vmledger; echo "${COMPREPLY[*]}"; done')
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60, cwd=cli.cwd)
    assert (done.stdout.splitlines(), done.stderr) == (
        ["set serve", "show", "balloon", "memory memory_actual", "--scope", "live persistent both current"], "")
    assert script.startswith("#compdef vmledger\n") == (shell == "zsh")


def test_watch_says_it_started_and_prints_a_line_per_record(tmp_path: pathlib.Path) -> None:
    """`vmledger watch` says when it starts, then prints one line per event it records (issue 18)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VMLEDGER_DB": str(tmp_path / "l.db")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "vmledger", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=60, env=env, cwd=tmp_path)
    assert run(*DEFINE_WEB).returncode == 0
    assert run("start", "web").returncode == 0
    assert run("sim", "balloon", "web", "900M").returncode == 0
    # Its Ctrl-C as a terminal's: a run started in the background ignores SIGINT, and the child would inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "vmledger", "watch", "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline(), proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # deaf to Ctrl-C: this test fails, and leaves no process or pipe to the next ones
            proc.communicate()
            raise
    assert (first, second) == (
        f"watching every domain of sim in {tmp_path / 'l.db'}: now, as announced, and every 0.2s; interrupt to stop\n",
        "#4 LiveValueObserved  web memory live 900MiB (the ledger had 1GiB)\n")


def test_observe_prints_human_lines(web: Cli) -> None:
    """`observe` prints what it recorded in words and binary units, and JSON only with --json (issue 18)."""
    assert web("--db", "l.db", "sim", "balloon", "web", "900M")[0] == 0
    assert web("--db", "l.db", "observe") == (
        0, "#4 LiveValueObserved  web memory live 900MiB (the ledger had 1GiB)\n", "")
    assert web("--db", "l.db", "observe") == (0, "nothing new\n", "")


@pytest.mark.parametrize("args, expected", [
    (("undefine", "db"), {"domain": "db", "undefined": True}),
    (("rebuild",), {"position": 5}),
    (("verify",), {"ok": True, "events": 5, "from": 0}),
    (("sim", "host-free", "1G"), {"sim": "host-free", "done": True}),
    (("init",), {"db": "l.db", "created": False, "events": 5}),
])
def test_json_on_every_command_that_prints_a_result(web: Cli, args: tuple[str, ...], expected: dict) -> None:
    """`undefine`, `rebuild`, `verify`, `sim` and `init` print JSON with --json (issue 18)."""
    assert web("--db", "l.db", "define", "db", "--type", "hvm", "--memory", "1G", "--max-memory", "1G",
               "--vcpus", "1", "--max-vcpus", "1")[0] == 0
    if args[0] != "undefine":
        assert web("--db", "l.db", "undefine", "db")[0] == 0
    code, out, err = web("--db", "l.db", *args, "--json")
    assert (code, json.loads(out), err) == (0, expected, "")


def test_import_prints_json(web: Cli) -> None:
    """`import --json` says how many events it imported (issue 18)."""
    _, export, _ = web("--db", "l.db", "export")
    pathlib.Path("ledger.jsonl").write_text(export)
    code, out, _ = web("--db", "copy.db", "import", "ledger.jsonl", "--json")
    assert (code, json.loads(out)) == (0, {"events": 3, "chain": "verified"})


def test_import_names_a_line_that_is_not_utf8_and_imports_nothing(web: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export with a line that is not UTF-8, from a file or standard input, exits 2 naming the line, and the ledger stays empty."""
    _, export, _ = web("--db", "l.db", "export")
    damaged = export.encode().replace(b"\n", b"\n\xff\n", 1)
    pathlib.Path("bad.jsonl").write_bytes(damaged)
    assert web("--db", "copy.db", "import", "bad.jsonl") == (
        2, "", "vmledger: error: line 2 of bad.jsonl is not UTF-8 text (invalid start byte)\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(damaged)))
    assert web("--db", "copy.db", "import", "-") == (
        2, "", "vmledger: error: line 2 of standard input is not UTF-8 text (invalid start byte)\n")
    assert web("--db", "copy.db", "events") == (0, "", "")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(export.encode())))
    assert web("--db", "copy.db", "import", "-") == (0, "imported 3 events; chain verified\n", "")


def test_import_skips_blank_lines_and_names_a_bad_line_by_its_number_in_the_file(web: Cli) -> None:
    """Blank lines in an export are skipped, yet counted: an error names the line as an editor numbers it."""
    _, export, _ = web("--db", "l.db", "export")
    first, *rest = export.splitlines(keepends=True)
    pathlib.Path("spaced.jsonl").write_text("\n" + first + "  \n" + "".join(rest) + "\n")
    pathlib.Path("bad.jsonl").write_text("\n" + first + "\n" + "[]\n" + "".join(rest))
    code, out, err = web("--db", "copy.db", "import", "bad.jsonl")
    assert (code, out, err.startswith("vmledger: error: line 4: not an exported event")) == (2, "", True), err
    assert web("--db", "copy.db", "events") == (0, "", "")
    assert web("--db", "copy.db", "import", "spaced.jsonl") == (0, "imported 3 events; chain verified\n", "")
    assert web("--db", "copy.db", "export")[1] == export


def test_import_of_a_missing_file_creates_no_ledger(cli: Cli) -> None:
    """`import` of a file that does not exist exits 2 saying so, and leaves no ledger behind."""
    assert cli("--db", "new.db", "import", "nothing.jsonl") == (
        2, "", "vmledger: error: no such export file: nothing.jsonl\n")
    assert sorted(p.name for p in cli.cwd.iterdir()) == []


def test_set_json_is_the_history_record_and_a_replay_says_so(web: Cli) -> None:
    """`set --json` prints the record `history --json` gives, and a repeated request id notes the replay (issue 18)."""
    code, out, err = web("--db", "l.db", "set", "web", "memory", "2G", "--request-id", "r1", "--reason", "cache",
                         "--principal", "alice", "--json")
    record = json.loads(out)
    assert (code, err, [record]) == (0, "", json.loads(web("--db", "l.db", "history", "--json")[1]))
    assert sorted(record) == ["completed_at", "domain", "outcomes", "position", "principal", "property", "reason",
                              "request_id", "requested", "requested_at", "scope"]
    code, out, err = web("--db", "l.db", "set", "web", "memory", "2G", "--request-id", "r1", "--json")
    assert (code, json.loads(out), err) == (
        0, record, "vmledger: request id r1 was recorded before: its first outcome again, nothing appended\n")


# 9. The Python API.


def test_api_results_are_typed_and_set_equals_history(tmp_path: pathlib.Path) -> None:
    """`set`, `show`, `get` and `drift` return typed results whose `to_dict()` is the CLI's JSON, and `set`'s record equals `history`'s (issue 18)."""
    import asyncio

    import vmledger
    from vmledger.results import DomainView, DriftRow, Outcome, PropertyValue, RequestRecord

    async def go() -> tuple:
        async with vmledger.open(str(tmp_path / "l.db")) as ledger:
            view = await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=2, max_vcpus=4)
            await ledger.start("web")
            await ledger.hypervisor.set_host_free(100 * MiB)
            record = await ledger.set("web", "memory", 1224 * MiB, reason="cache")
            again = await ledger.set("web", "memory", 1224 * MiB, request_id=record.request_id)
            return (view, record, again, await ledger.history(), await ledger.get("web", "memory", scope="live"),
                    await ledger.drift())

    view, record, again, history, got, drift = asyncio.run(go())
    assert (type(view), type(record), type(got), [type(d) for d in drift]) == (
        DomainView, RequestRecord, PropertyValue, [DriftRow])
    assert (history, again, again.replayed, record.replayed) == ([record], record, True, False)
    assert record.outcomes == {"persistent": Outcome(status="applied", value=1224 * MiB, reason=None, message=None),
                               "live": Outcome(status="partial", value=1124 * MiB, reason=None,
                                               message="host had only 100MiB free")}
    assert (record.principal, record.reason, record.position, record.applied) == (
        default_principal(), "cache", 4, False)
    assert (got.value, view.row("memory").persistent, drift[0].cause, drift[0].request_id) == (
        1124 * MiB, GiB, "partial", record.request_id)
    assert json.loads(json.dumps(record.to_dict()))["requested_at"] == record.to_dict()["requested_at"]
    assert record["outcomes"]["live"]["value"] == 1124 * MiB  # still readable as the dict it was


def test_api_and_cli_default_to_the_same_principal(cli: Cli) -> None:
    """A request made without a principal is recorded under the user name, through the API as through the CLI (issue 18)."""
    import asyncio

    import vmledger

    assert cli("--db", "l.db", *DEFINE_WEB)[0] == 0

    async def go() -> str | None:
        async with vmledger.open("l.db") as ledger:
            return (await ledger.set("web", "vcpus", 3)).principal

    assert cli("--db", "l.db", "set", "web", "vcpus", "4")[0] == 0
    assert [r["principal"] for r in json.loads(cli("--db", "l.db", "history", "--json")[1])] + [asyncio.run(go())] == [
        default_principal(), default_principal()]


# 7. The simulator's state goes with its ledger.


def test_a_copied_ledger_brings_its_simulated_domains_back(web: Cli) -> None:
    """A ledger copied without the simulator's file starts the simulator as it recorded it, says so, and `set` works (issue 18)."""
    assert web("--db", "l.db", "set", "web", "vcpus", "3")[0] == 0
    os.mkdir("elsewhere")
    pathlib.Path("elsewhere/copy.db").write_bytes(pathlib.Path("l.db").read_bytes())
    code, out, err = web("--db", "elsewhere/copy.db", "set", "web", "memory", "2G")
    assert (code, out.splitlines()[1:], err) == (0, ["    persistent applied   2GiB", "    live       applied   2GiB"], (
        "vmledger: the simulated hypervisor's state elsewhere/copy.db.sim.json was missing: "
        "started it as the ledger last recorded its 1 domain\n"))
    assert web("--db", "elsewhere/copy.db", "get", "web", "vcpus", "--live") == (0, "3\n", "")
    assert web("--db", "elsewhere/copy.db", "set", "web", "vcpus", "4")[2] == ""  # said once


def test_an_imported_ledger_brings_its_simulated_domains_back(web: Cli) -> None:
    """A ledger imported from an export drives the same simulated domains on its first write (issue 18)."""
    pathlib.Path("ledger.jsonl").write_text(web("--db", "l.db", "export")[1])
    assert web("--db", "new.db", "import", "ledger.jsonl")[0] == 0
    code, out, err = web("--db", "new.db", "stop", "web")
    assert (code, "shut off" in out.splitlines()[0], "was missing" in err) == (0, True, True)


def test_sim_path_names_the_simulators_state(cli: Cli) -> None:
    """`--hypervisor sim:PATH` keeps the simulated hypervisor's state in PATH, and nowhere else (issue 18)."""
    code, _, err = cli("--db", "l.db", "--hypervisor", "sim:host/state.json", *DEFINE_WEB)
    assert (code, err.startswith("vmledger: the simulator cannot keep its state in host/state.json")) == (1, True)
    os.mkdir("host")
    assert cli("--db", "l.db", "--hypervisor", "sim:host/state.json", *DEFINE_WEB)[0] == 0
    assert cli("--db", "l.db", "--hypervisor", "sim:host/state.json", "start", "web")[0] == 0
    assert (sorted(os.listdir("host")), "l.db.sim.json" in os.listdir(".")) == (["state.json", "state.json.lock"], False)
    assert asyncio.run(SimulatedHypervisor("host/state.json").observe("web")).running is True


# 8. The demo leaves something to explore, and commands to paste.


def _history_shape(db: str, cwd: pathlib.Path) -> list[tuple]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vmledger", "--db", db, "history", "--json"], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)
    return [(r["domain"], r["property"], r["requested"], r["scope"], r["principal"], r["reason"],
             sorted((s, o["status"], o["value"], o["reason"]) for s, o in r["outcomes"].items()))
            for r in json.loads(done.stdout)]


def test_demo_keeps_its_ledger_and_prints_commands_that_replay_it(tmp_path: pathlib.Path) -> None:
    """`demo --keep DIR` keeps a verified ledger in DIR, and its printed commands, pasted into a shell, make the same history (issue 18)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VMLEDGER_DB", None)
    demo = subprocess.run([sys.executable, "-m", "vmledger", "demo", "--keep", "kept"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    kept = tmp_path / "kept" / "demo.db"
    assert (demo.returncode, demo.stderr, demo.stdout.splitlines()[-6:]) == (0, "", [
        f"The ledger stays in sqlite:///{kept}; explore it, for example:",
        f"  export VMLEDGER_DB=sqlite:///{kept}",
        "  vmledger history web", "  vmledger show db", "  vmledger drift --as-of 12", "  vmledger events --from 20"])
    commands = [line[2:] for line in demo.stdout.splitlines() if line.startswith("$ ")]
    assert all(c.startswith("vmledger ") for c in commands) and len(commands) == 18
    replay = tmp_path / "replay"
    replay.mkdir()
    script = "\n".join(["vmledger() { python3 -m vmledger \"$@\" >/dev/null || true; }", *commands])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, cwd=replay,
                          env={**env, "VMLEDGER_DB": "sqlite:///replay.db",
                               "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]})
    assert (done.returncode, done.stderr) == (0, "")
    shape = _history_shape(str(kept), tmp_path)
    assert (len(shape), _history_shape("replay.db", replay)) == (7, shape)
    again = subprocess.run([sys.executable, "-m", "vmledger", "demo", "--keep", "kept"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path, env=env)
    assert (again.returncode, again.stderr) == (
        2, f"vmledger: error: the demo needs an empty ledger, and sqlite:///{kept} holds one already\n")


def test_demo_without_keep_says_how_to_keep_it(tmp_path: pathlib.Path) -> None:
    """`demo` alone leaves nothing behind and says how to keep the ledger (issue 18)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VMLEDGER_DB", None)
    demo = subprocess.run([sys.executable, "-m", "vmledger", "demo"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert (demo.returncode, demo.stdout.splitlines()[-1], os.listdir(tmp_path)) == (
        0, "The temporary ledger is deleted; run 'vmledger demo --keep DIR' to keep it in DIR and explore it.", [])
