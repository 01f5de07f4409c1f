"""Write docs/reference.md from the catalogue, the event classes and the CLI's --help.

Run `python scripts/gen_docs.py` after changing any of them; a test fails
while the committed reference differs from what this script writes.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import sys
from typing import Iterator

from vmledger.eventstore.catalogue import CATALOGUE, LIMITS, TEXT_RULE, Cause, Outcome, Reason
from vmledger.eventstore.codec import UPCASTERS
from vmledger.eventstore.events import EVENT_TYPES, ChangeOutcome, ChangeRequested
from vmledger.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "reference.md"

REASONS = {
    Reason.READ_ONLY: "the property is computed at run time and can never be set",
    Reason.REQUIRES_RESTART: "the property is fixed while the domain runs; change it persistently and restart",
    Reason.GUEST_UNSUPPORTED: "the guest lacks the capability a live change needs (balloon, hotplug)",
    Reason.TRAY_LOCKED: "the guest has locked the CD-ROM tray",
    Reason.NOT_REMOVABLE: "the device is not a removable CD-ROM",
    Reason.OUT_OF_RANGE: "the value breaks the property's bounds in that config",
    Reason.DOMAIN_NOT_RUNNING: "a live change was asked of a domain that is not running",
    Reason.HYPERVISOR_ERROR: "the hypervisor reported an error; its message is kept",
    Reason.TIMEOUT: "the hypervisor did not answer within the timeout, or another writer held the domain's lock "
                    "longer than a call and its outcome take (the hypervisor was then not asked)",
}

CAUSES = {
    Cause.PARTIAL: "the hypervisor applied only part of a live change",
    Cause.REFUSED: "one scope of a request was refused while the other changed",
    Cause.REQUIRES_RESTART: "a property fixed while the domain runs was changed in the persistent config; it takes effect at the next boot",
    Cause.FAILED: "one scope of a request failed (error or timeout) while the other changed",
    Cause.EXTERNAL: "the live value or the persistent config was changed outside the ledger, and observed",
    Cause.IN_FLIGHT: "one scope of a request changed and the other scope's outcome is not recorded yet",
    Cause.LIVE_ONLY: "a change was asked for the live config only",
    Cause.PERSISTENT_ONLY: "a settable property was changed in the persistent config only; it takes effect at the next boot",
}


DRIFT_RULE = (
    "A drift row exists for each property of a running domain whose live value differs from its persistent value.",
    "It names the **event that made the current difference**: the latest event that changed the persistent or "
    "the live value of that property while they differ, with its request (none for an observed change), "
    "its position (`since_position`) and its time (`since`).",
    "",
    "- An event that changes neither value (a request refused in every scope, a request for the value already "
    "held, an observation that found nothing new) changes neither the cause, nor the request, nor `since`.",
    "- When the two become equal the row disappears; when they differ again, `since` starts at the event that "
    "made them differ.",
    "- A persistent change made by a request that also asked for the live value is `in_flight` until the live "
    "outcome is recorded; that outcome then gives the row its cause (`partial`, `refused`, `failed`, "
    "`requires_restart`). Its `since` stays the persistent change's, but for `partial`: that outcome changed "
    "the live value, so `since` is the outcome's.",
    "- `external` is a change observed outside the ledger (`LiveValueObserved`, `PersistentValueObserved`), or a "
    "domain that started with values other than its persistent config.",
    "- `drift --as-of X` gives exactly the rows `drift` gave at X, cause and `since` included.",
    "",
    "The rows are kept by the same fold as every other projection, in the transaction of each append, "
    "and `rebuild` and `verify` use that fold too.",
    "Rows that an older version of these rules made are rebuilt when a writer next opens the ledger.",
)

EPISODES = (
    "A **drift episode** is the life of one drift row: it begins at the row's `since_position` and ends at the "
    "event that removes the row, or that becomes the row's new `since`. An `in_flight` row is no episode of its "
    "own: the cause it gets makes the episode, from the row's `since` then (the persistent change's, or a "
    "`partial` outcome's).",
    "The projector keeps the episodes in a table of their own, in the transaction of each append, and `rebuild` "
    "and `verify` make them with the same fold.",
    "`vmledger audit` lists the episodes that overlap its period, each with the time it lies within the period, "
    "and each domain's **time in drift**: the time within the period in which any of its properties drifted "
    "(the union of its episodes, not their sum).",
    "It leaves out an episode that ended while its cause was still `in_flight`: the time between one request's "
    "two outcomes, a request being carried out rather than a difference that stayed (there is one for every "
    "request in both scopes that changed a value); `drift --as-of` still shows it.",
    "The table keeps such an episode's row while it is open, and deletes it with its drift row when it ends in "
    "flight. A ledger that an earlier version wrote keeps them: the first writer to open it rebuilds its "
    "projections once, and a reader's `audit` leaves them out all the same.",
)

_STABLE_ENV = {"COLUMNS": "100", "VMLEDGER_DB": None, "VMLEDGER_HYPERVISOR": None, "VMLEDGER_TIMEOUT": None,
               "VMLEDGER_URL": None}


@contextlib.contextmanager
def _stable_env() -> Iterator[None]:
    """Make --help independent of the terminal and of the caller's environment."""
    saved = {k: os.environ.get(k) for k in _STABLE_ENV}
    try:
        for k, v in _STABLE_ENV.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with _stable_env(), contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue().rstrip()


def render() -> str:
    """Return the text of docs/reference.md."""
    lines = ["# vmledger reference", "", "This file is generated by `python scripts/gen_docs.py`; do not edit it by hand.", ""]
    lines += ["## Properties", "",
              "Kinds: `rw` settable at any time; `ro_ins` settable in the persistent config only, effective at next boot; `ro_run` computed, never settable.", "",
              "| property | type | unit | kind | a live change needs | description |",
              "|---|---|---|---|---|---|"]
    for p in CATALOGUE.values():
        name = "media:DEV" if p.name == "media" else p.name
        needs = " or ".join(sorted(c.value for c in p.live_needs)) or "-"
        lines.append(f"| `{name}` | {p.type} | {p.unit or '-'} | {p.kind.value} | {needs} | {p.description} |")
    lines += ["", "## Limits", "",
              "A request that breaks one of these limits is an invalid request: it writes nothing, "
              "raises `InvalidRequestError`, and the command line exits 2.",
              TEXT_RULE, "",
              "| input | limit |", "|---|---|"]
    lines += [f"| {what} | {rule} |" for what, rule in LIMITS]
    lines += ["", "A request id vmledger makes up, when the request names none, is a UUID version 7 (RFC 9562) "
              "in 32 hex digits: it sorts by the millisecond it was made."]
    lines += ["", "## Events", "",
              "Change events are named `<Property>Change<Outcome>`.",
              f"`…{Outcome.REQUESTED.value}` carries: {', '.join(f'`{f.name}`' for f in ChangeRequested.__attrs_attrs__)}.",
              f"Every outcome carries: {', '.join(f'`{f.name}`' for f in ChangeOutcome.__attrs_attrs__)}; "
              "`scope` is `persistent` or `live`, `value` is the value in force afterwards.", "",
              "Each version of each event has a JSON Schema (draft 2020-12) of its `data`, linked below and printed by "
              "`vmledger schema TYPE`; see [replay.md](replay.md) for reading the log from other tools.", "",
              "| event | schema version | doc | JSON Schema |", "|---|---|---|---|"]
    for name, cls in EVENT_TYPES.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        schemas = ", ".join(f"[v{v}](../eventstore/schemas/{name}.v{v}.json)" for v in range(1, cls.schema_version + 1))
        lines.append(f"| `{name}` | {cls.schema_version} | {doc} | {schemas} |")
    lines += ["", "### Older schema versions", "",
              "Stored rows are never rewritten: a row of an older version is upcast to the current one when it is read.", "",
              "| event | version read | upcast to the next version |", "|---|---|---|"]
    for (name, version), upcast in sorted(UPCASTERS.items()):
        lines.append(f"| `{name}` | {version} | {(upcast.__doc__ or '').strip().splitlines()[0]} |")
    lines += ["", "## Reason codes", "", "| reason | meaning |", "|---|---|"]
    lines += [f"| `{r.value}` | {REASONS[r]} |" for r in Reason]
    lines += ["", "## Drift", "", *DRIFT_RULE, "", "### Drift causes", "", "| cause | meaning |", "|---|---|"]
    lines += [f"| `{c.value}` | {CAUSES[c]} |" for c in Cause]
    lines += ["", "### Drift episodes", "", *EPISODES]
    lines += ["", "## Command line", ""]
    parser = build_parser()
    commands = [a for a in parser._subparsers._group_actions[0].choices]  # type: ignore[union-attr]
    lines += ["```", _help([]), "```", ""]
    for command in commands:
        lines += [f"### vmledger {command}", "", "```", _help([command]), "```", ""]
    return "\n".join(lines)


def main() -> int:
    """Write the reference and return 0."""
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
