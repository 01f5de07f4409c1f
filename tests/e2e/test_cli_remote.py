"""The CLI contract's end-to-end tests again, with `--url` against a real `vmledger serve` instead of `--db`.

The tests are test_cli.py's own, collected here a second time with a
`cli` fixture that runs every command remotely: same output, same exit
codes.  The principal of a remote request is its token's name, so a
command given `--principal NAME` runs with the token named NAME.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.e2e.served import served, need_serve
from tests.e2e.test_cli import (  # noqa: F401 - collected again, with this module's `cli`
    Cli,
    test_diff_revert_and_audit_commands,
    test_domains_named_dot_and_dot_dot_are_domains_like_any_other,
    test_events_are_json_lines,
    test_history_and_drift_as_of,
    test_hvm_memory_refused_until_hotplug,
    test_hypervisor_timeout_fails_and_never_stays_in_flight,
    test_invalid_input_writes_nothing,
    test_locked_tray_and_read_only_are_recorded,
    test_max_memory_needs_restart,
    test_out_of_band_balloon_is_external,
    test_out_of_band_config_change_is_observed_into_the_persistent_config,
    test_rebuild_verify_and_tampering,
    test_repeated_request_id_appends_nothing,
    test_short_balloon_is_partial_and_drifts,
    test_stopped_domain_scopes,
    test_verify_checkpoint_file,
    test_verify_checks_in_full_since_a_checkpoint_of_other_fold_rules,
    test_verify_refuses_a_bad_start,
    test_verify_refuses_a_damaged_checkpoint_file_and_keeps_it,
)
from vmledger.cli import main


class RemoteCli(Cli):
    """Runs `vmledger --url URL` in-process with a token in VMLEDGER_TOKEN, and captures what it prints."""

    def __init__(self, db: str, url: str, tokens: dict[str, str], capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(db, capsys)
        self.url = url
        self.tokens = tokens
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str) -> tuple[int, str, str]:
        who = args[args.index("--principal") + 1] if "--principal" in args else "alice"
        self.monkeypatch.setenv("VMLEDGER_TOKEN", self.tokens[who])
        self.capsys.readouterr()
        code = main(["--url", self.url, *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """Return a remote CLI on a fresh served ledger where `web` (PV, CD-ROM hdc) and `db` (HVM) run."""
    need_serve()
    db = f"sqlite:///{tmp_path}/ledger.db"
    with served(db, str(tmp_path / "server.log")) as server:
        c = RemoteCli(db, server.url, server.tokens, capsys, monkeypatch)
        assert c("define", "web", "--type", "pv", "--memory", "1GiB", "--max-memory", "4GiB",
                 "--vcpus", "2", "--max-vcpus", "4", "--cdrom", "hdc")[0] == 0
        assert c("define", "db", "--type", "hvm", "--memory", "1GiB", "--max-memory", "4GiB",
                 "--vcpus", "2", "--max-vcpus", "4")[0] == 0
        assert c("start", "web")[0] == 0
        assert c("start", "db")[0] == 0
        yield c
