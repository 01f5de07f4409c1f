"""Add the missing golden files and JSON Schemas of the stored event format; never overwrite one.

`tests/data/golden/<EventName>.v<N>.json` holds one event of type
`EventName` at schema version `N` exactly as a row stores it: its `type`,
its `schema_version`, and its `data` as the canonical JSON text.
A golden file records the past, so this script only ever adds the file of an
event type's current version when it is missing, and never rewrites one that
exists; an older version's file can only come from an earlier run.
Run `python3 scripts/golden.py` before raising an event's schema version (so
the old version's file exists) and again after (to add the new one), and
commit what it writes.
It does the same for `eventstore/schemas/<EventName>.v<N>.json`, the JSON
Schema of each version's data (see `vmledger.eventstore.schema`).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The checkout this script lives in, not whichever vmledger is installed.
sys.path.insert(0, str(ROOT))

from vmledger.eventstore.catalogue import CATALOGUE, Kind, Outcome, Reason  # noqa: E402
from vmledger.eventstore.codec import encode  # noqa: E402
from vmledger.eventstore.events import EVENT_TYPES, ChangeOutcome, ChangeRequested, Event  # noqa: E402
from vmledger.eventstore.schema import FOLDER as SCHEMAS, generate  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden"
MiB, GiB = 2**20, 2**30

#: A sample of every lifecycle and observation event, with every field set.
LIFECYCLE: dict[str, dict[str, Any]] = {
    "DomainDefined": {
        "domain": "web", "uuid": "32f57163c97f4a9792269c31722e1ac2", "guest_type": "pv",
        "config": {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1,
                   "media:hdc": "/iso/ünïcode.iso"},
        "capabilities": {"balloon": True, "memory_hotplug": None, "vcpu_hotplug": False},
    },
    "DomainStarted": {
        "config": {"memory": GiB, "max_memory": 4 * GiB, "vcpus": 2, "max_vcpus": 4, "numa_nodes": 1,
                   "media:hdc": "/iso/ünïcode.iso"},
    },
    "DomainStopped": {},
    "DomainUndefined": {},
    "GuestCapabilitiesObserved": {"capabilities": {"memory_hotplug": False, "vcpu_hotplug": True}},
    "MediaTrayLocked": {"device": "hdc"},
    "MediaTrayUnlocked": {"device": "hdc"},
    "LiveValueObserved": {"property": "memory", "value": 900 * MiB, "previous": 1124 * MiB},
    "PersistentValueObserved": {"property": "vcpus", "value": 3, "previous": 2},
    "DeviceAttached": {"device": "hdd", "scope": "persistent", "media": "/iso/ünïcode.iso"},
    "DeviceDetached": {"device": "hdd", "scope": "live"},
}

#: Per catalogue property: the property name, the value asked for, and the value in force before.
CHANGES: dict[str, tuple[str, Any, Any]] = {
    "memory": ("memory", 1224 * MiB, GiB),
    "max_memory": ("max_memory", 8 * GiB, 4 * GiB),
    "vcpus": ("vcpus", 6, 4),
    "max_vcpus": ("max_vcpus", 8, 4),
    "numa_nodes": ("numa_nodes", 2, 1),
    "media": ("media:hdc", "/iso/ünïcode.iso", ""),
    "power_state": ("power_state", "off", "running"),
    "memory_actual": ("memory_actual", 900 * MiB, GiB),
}

_REFUSAL = {Kind.RO_RUN: Reason.READ_ONLY, Kind.RO_INS: Reason.REQUIRES_RESTART}


def _change_sample(cls: type[Event]) -> dict[str, Any]:
    """Return the fields of a sample change event: a request, or one outcome of it."""
    (base,) = (p for p in CATALOGUE.values() if cls.name.startswith(f"{p.event_prefix}Change"))
    prop, asked, before = CHANGES[base.name]
    common = {"request_id": "req-golden-1", "property": prop}
    if issubclass(cls, ChangeRequested):
        return {**common, "value": asked, "scope": "both", "principal": "alice",
                "reason": "more cache für die Nacht"}
    outcome: Outcome = cls.outcome  # type: ignore[attr-defined]
    if outcome is Outcome.APPLIED:
        return {**common, "scope": "persistent", "requested": asked, "value": asked}
    if outcome is Outcome.PARTIALLY_APPLIED:
        if base.type == "bytes":
            return {**common, "scope": "live", "requested": asked, "value": asked - 100 * MiB,
                    "message": "host had only 104857600 bytes free"}
        got = asked - 1 if base.type == "count" else before
        return {**common, "scope": "live", "requested": asked, "value": got,
                "message": "the guest took only part of the change"}
    if outcome is Outcome.REFUSED:
        reason = _REFUSAL.get(base.kind, Reason.TRAY_LOCKED if base.name == "media" else Reason.GUEST_UNSUPPORTED)
        return {**common, "scope": "live", "requested": asked, "value": before, "reason": reason.value,
                "message": f"{prop} cannot change live: {reason.value}"}
    return {**common, "scope": "live", "requested": asked, "value": None, "reason": Reason.TIMEOUT.value,
            "message": "the hypervisor did not answer within 10 seconds"}


def sample(name: str) -> Event:
    """Return a sample event of type `name` at its current version, every field exercised.

    Raises:
        KeyError: the type has no sample yet (add one to this script).
    """
    cls = EVENT_TYPES[name]
    if issubclass(cls, (ChangeRequested, ChangeOutcome)):
        return cls(**_change_sample(cls))
    return cls(**LIFECYCLE[name])


def golden_text(event: Event) -> str:
    """Return the text of the golden file of `event`: the row's type, version and data text."""
    name, version, data = encode(event)
    return json.dumps({"type": name, "schema_version": version, "data": data}, indent=2, ensure_ascii=False) + "\n"


def schema_text(cls: type[Event]) -> str:
    """Return the text of the JSON Schema file of `cls`'s current version."""
    return json.dumps(generate(cls), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write the missing golden files and schemas of current versions; return 1 if an older one is missing."""
    status = 0
    for folder, text in ((GOLDEN, lambda name, cls: golden_text(sample(name))),
                         (SCHEMAS, lambda name, cls: schema_text(cls))):
        folder.mkdir(parents=True, exist_ok=True)
        for name, cls in EVENT_TYPES.items():
            for version in range(1, cls.schema_version + 1):
                path = folder / f"{name}.v{version}.json"
                if path.exists():
                    continue
                if version < cls.schema_version:
                    print(f"missing {path.relative_to(ROOT)}: only an earlier run could write it; "
                          "recover it from version control", file=sys.stderr)
                    status = 1
                    continue
                with open(path, "x", encoding="utf-8") as f:  # "x": fail rather than overwrite
                    f.write(text(name, cls))
                print(f"wrote {path.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
