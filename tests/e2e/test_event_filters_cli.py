"""`vmledger events --domain --type --since --until`: the feed filtered, as the unfiltered feed says it should be (issue 17).

`test_event_filters_remote.py` runs these tests again with `--url` against a real `vmledger serve`.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from tests.e2e.test_cli import Cli, cli  # noqa: F401 - the fixture of a ledger where `web` and `db` run


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_events_filtered_by_domain_type_and_period(cli: Cli) -> None:  # noqa: F811 - the imported fixture
    """Each filter, and their combination, prints the events of the unfiltered feed that match; a bad one exits 2."""
    assert cli("set", "web", "memory", "2GiB")[0] == 0
    assert cli("set", "db", "vcpus", "3", "--config")[0] == 0
    assert cli("set", "web", "vcpus", "3", "--config")[0] == 0
    everything = _lines(cli("events")[1])
    web = {e["stream"] for e in everything if e["type"] == "DomainDefined" and e["data"]["domain"] == "web"}
    middle = everything[len(everything) // 2]["recorded_at"]
    after = (datetime.fromisoformat(middle) + timedelta(microseconds=1)).isoformat()

    def positions(*args: str) -> tuple[int, list[int], str]:
        code, out, err = cli("events", *args)
        return code, [e["position"] for e in _lines(out)], err

    def kept(keep) -> tuple[int, list[int], str]:  # type: ignore[no-untyped-def]
        return 0, [e["position"] for e in everything if keep(e)], ""

    assert positions("--domain", "web") == kept(lambda e: e["stream"] in web)
    assert positions("--type", "VcpusChangeRequested", "--type", "DomainStarted") == kept(
        lambda e: e["type"] in ("VcpusChangeRequested", "DomainStarted"))
    assert positions("--since", middle) == kept(lambda e: e["recorded_at"] >= middle)
    assert positions("--until", middle) == kept(lambda e: e["recorded_at"] <= middle)
    assert positions("--since", after, "--domain", "web", "--type", "VcpusChangeRequested", "--from", "1") == kept(
        lambda e: e["recorded_at"] > middle and e["stream"] in web and e["type"] == "VcpusChangeRequested")

    # An unknown domain or type, a bad time, or --until with --follow: one line on stderr, exit 2, nothing printed.
    assert [cli("events", *args) for args in (("--domain", "wbe"), ("--follow", "--domain", "wbe"),
                                              ("--type", "MemoryChangeRequestd"),
                                              ("--since", "yesterday"), ("--follow", "--until", "2026-01-01"))] == [
        (2, "", "vmledger: error: unknown domain 'wbe': did you mean 'web'?\n"),
        (2, "", "vmledger: error: unknown domain 'wbe': did you mean 'web'?\n"),
        (2, "", "vmledger: error: unknown event type 'MemoryChangeRequestd': did you mean 'MemoryChangeRequested'?\n"),
        (2, "", "vmledger: error: invalid time 'yesterday': use ISO 8601, e.g. 2026-01-31T12:00:00Z\n"),
        (2, "", "vmledger: error: --until ends the feed and --follow never does: give one of them\n"),
    ]
