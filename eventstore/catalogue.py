"""The property catalogue and the vocabulary every other module reads.

One table (`CATALOGUE`) says, for every property: its type and unit, its kind,
which guest capability a live change needs, and its bounds.  Validation,
decisions, CLI help and documentation all read it.
"""

from __future__ import annotations

import difflib
import enum
import math
import unicodedata
from typing import Iterable, Union

import attrs

from vmledger.eventstore.errors import InvalidRequestError, UnknownPropertyError

__all__ = [
    "size_text",
    "Kind",
    "Scope",
    "Outcome",
    "Reason",
    "Capability",
    "GuestType",
    "Cause",
    "Property",
    "CATALOGUE",
    "MEDIA_PREFIX",
    "MAX_NAME_LENGTH",
    "MAX_DEVICE_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_PRINCIPAL_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_STATE_LENGTH",
    "MAX_BYTES",
    "MAX_COUNT",
    "MAX_POSITION",
    "LIMITS",
    "TEXT_RULE",
    "Value",
    "lookup",
    "media_property",
    "check_value",
    "check_name",
    "check_device",
    "check_text",
    "check_request_id",
    "check_principal",
    "check_reason",
    "check_position",
    "check_page",
    "check_seconds",
    "shown",
    "nearest",
]

Value = Union[int, str]

MEDIA_PREFIX = "media:"
# Every limit on what a caller may send lives here; `LIMITS` documents them.
MAX_NAME_LENGTH = 64
MAX_DEVICE_LENGTH = 32
MAX_PATH_LENGTH = 4096
MAX_REQUEST_ID_LENGTH = 128
MAX_PRINCIPAL_LENGTH = 128
MAX_REASON_LENGTH = 1024
MAX_STATE_LENGTH = 64
#: Upper sanity bound for sizes (16 TiB) and counts; beyond it a value is malformed.
MAX_BYTES = 16 * 2**40
MAX_COUNT = 4096
#: The largest log position a query may name: both backends store positions as signed 64-bit integers.
MAX_POSITION = 2**63 - 1

#: Bidirectional embedding, override and isolate controls: they reorder how a record reads on screen.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Control characters (C0, DEL, C1), lone surrogates, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))

TEXT_RULE = (
    "Text (names, devices, paths, request ids, principals, reasons) is Unicode without control characters "
    "(C0, DEL and C1), line or paragraph separators (U+2028, U+2029), bidirectional embedding, override and "
    "isolate controls (U+202A to U+202E, U+2066 to U+2069) or lone surrogates; "
    "lengths count code points.\n"
    "Other Unicode, such as right-to-left text with its marks and combining characters, is kept as given."
)

#: What each kind of input may be, as docs/reference.md lists it.
LIMITS: tuple[tuple[str, str], ...] = (
    ("domain name", f"1 to {MAX_NAME_LENGTH} ASCII letters, digits, `.`, `_` and `-`, not starting with `-`"),
    ("device name", f"1 to {MAX_DEVICE_LENGTH} ASCII letters and digits"),
    ("media path", f"empty (eject), or an absolute path (starting with `/`) of at most {MAX_PATH_LENGTH} characters"),
    ("request id", f"1 to {MAX_REQUEST_ID_LENGTH} characters"),
    ("principal", f"1 to {MAX_PRINCIPAL_LENGTH} characters"),
    ("reason", f"1 to {MAX_REASON_LENGTH} characters"),
    ("state value", f"1 to {MAX_STATE_LENGTH} characters (a request for a computed property, recorded as refused)"),
    ("size", f"a whole number of bytes from 0 to {MAX_BYTES} (16 TiB)"),
    ("count", f"a whole number from 0 to {MAX_COUNT}"),
    ("log position", f"a whole number from 0 to {MAX_POSITION}"),
)


class Kind(str, enum.Enum):
    """How a property may change: never, only in the persistent config, or any time."""

    RO_RUN = "ro_run"  # computed at run time, never settable
    RO_INS = "ro_ins"  # settable in the persistent config only, effective at next boot
    RW = "rw"  # settable at any time


class Scope(str, enum.Enum):
    """Which configuration a request concerns."""

    LIVE = "live"
    PERSISTENT = "persistent"
    BOTH = "both"
    CURRENT = "current"


class Outcome(str, enum.Enum):
    """What happened to a request in one scope; the suffix of the event name."""

    REQUESTED = "Requested"
    APPLIED = "Applied"
    PARTIALLY_APPLIED = "PartiallyApplied"
    REFUSED = "Refused"
    FAILED = "Failed"

    @property
    def status(self) -> str:
        """Return the short status word the CLI and history use."""
        return _STATUS[self]


_STATUS = {
    Outcome.REQUESTED: "in_flight",
    Outcome.APPLIED: "applied",
    Outcome.PARTIALLY_APPLIED: "partial",
    Outcome.REFUSED: "refused",
    Outcome.FAILED: "failed",
}


class Reason(str, enum.Enum):
    """Why a scope was refused or failed; mirrors the hypervisor APIs users know."""

    READ_ONLY = "read_only"
    REQUIRES_RESTART = "requires_restart"
    GUEST_UNSUPPORTED = "guest_unsupported"
    TRAY_LOCKED = "tray_locked"
    NOT_REMOVABLE = "not_removable"
    OUT_OF_RANGE = "out_of_range"
    DOMAIN_NOT_RUNNING = "domain_not_running"
    HYPERVISOR_ERROR = "hypervisor_error"
    TIMEOUT = "timeout"


class Capability(str, enum.Enum):
    """A guest capability that a live change may need."""

    BALLOON = "balloon"
    MEMORY_HOTPLUG = "memory_hotplug"
    VCPU_HOTPLUG = "vcpu_hotplug"


class GuestType(str, enum.Enum):
    """The virtualisation mode of a guest."""

    PV = "pv"
    HVM = "hvm"


class Cause(str, enum.Enum):
    """Why the live value of a property differs from its persistent value."""

    PARTIAL = "partial"
    REFUSED = "refused"
    REQUIRES_RESTART = "requires_restart"
    FAILED = "failed"
    EXTERNAL = "external"
    IN_FLIGHT = "in_flight"
    LIVE_ONLY = "live_only"
    PERSISTENT_ONLY = "persistent_only"


@attrs.frozen(kw_only=True)
class Property:
    """One catalogue entry: what a property is and how it may change."""

    name: str
    type: str  # "bytes", "count", "path" or "state"
    unit: str  # "bytes", "vCPUs", "nodes", "" for paths and states
    kind: Kind
    #: A live change needs at least one of these capabilities (empty: none needed).
    live_needs: frozenset[Capability] = frozenset()
    #: The property whose value bounds this one from above (or below, for maxima).
    upper: str | None = None
    lower: str | None = None
    minimum: int = 0
    description: str = ""

    @property
    def event_prefix(self) -> str:
        """Return the CamelCase prefix of this property's event names."""
        base = self.name.split(":", 1)[0]
        return "".join(part.capitalize() for part in base.split("_"))


def _p(**kw: object) -> Property:
    return Property(**kw)  # type: ignore[arg-type]


CATALOGUE: dict[str, Property] = {
    p.name: p
    for p in (
        _p(
            name="memory",
            type="bytes",
            unit="bytes",
            kind=Kind.RW,
            live_needs=frozenset({Capability.BALLOON, Capability.MEMORY_HOTPLUG}),
            upper="max_memory",
            minimum=1,
            description="Memory allocated to the guest; 0 < memory <= max_memory.",
        ),
        _p(
            name="max_memory",
            type="bytes",
            unit="bytes",
            kind=Kind.RO_INS,
            lower="memory",
            minimum=1,
            description="Maximum memory; fixed while the domain runs.",
        ),
        _p(
            name="vcpus",
            type="count",
            unit="vCPUs",
            kind=Kind.RW,
            live_needs=frozenset({Capability.VCPU_HOTPLUG}),
            upper="max_vcpus",
            minimum=1,
            description="Virtual CPUs online; 1 <= vcpus <= max_vcpus.",
        ),
        _p(
            name="max_vcpus",
            type="count",
            unit="vCPUs",
            kind=Kind.RO_INS,
            lower="vcpus",
            minimum=1,
            description="Maximum virtual CPUs; fixed while the domain runs.",
        ),
        _p(
            name="numa_nodes",
            type="count",
            unit="nodes",
            kind=Kind.RO_INS,
            minimum=1,
            description="NUMA nodes of the guest topology; fixed while the domain runs.",
        ),
        _p(
            name="media",
            type="path",
            unit="",
            kind=Kind.RW,
            description="CD-ROM media as `media:DEVICE`; an empty path ejects. "
            "A live change is refused while the guest has locked the tray.",
        ),
        _p(
            name="power_state",
            type="state",
            unit="",
            kind=Kind.RO_RUN,
            description="Whether the domain is running or shut off; computed.",
        ),
        _p(
            name="memory_actual",
            type="bytes",
            unit="bytes",
            kind=Kind.RO_RUN,
            description="Memory the balloon really holds; computed.",
        ),
    )
}

#: Properties a domain's persistent config always carries (media are per device).
CONFIG_PROPERTIES = ("memory", "max_memory", "vcpus", "max_vcpus", "numa_nodes")


def media_property(device: str) -> str:
    """Return the property name of the CD-ROM media in `device`."""
    return MEDIA_PREFIX + device


def lookup(name: str) -> Property:
    """Return the catalogue entry for a property name such as `memory` or `media:hdc`.

    Raises:
        UnknownPropertyError: the name is not in the catalogue.
        InvalidRequestError: the name is not text.
    """
    if not isinstance(name, str):
        raise InvalidRequestError(f"a property name must be text, not {type(name).__name__}")
    if name.startswith(MEDIA_PREFIX):
        check_device(name[len(MEDIA_PREFIX) :])
        return CATALOGUE["media"]
    entry = CATALOGUE.get(name)
    if entry is None or entry.name == "media":
        names = sorted(n for n in CATALOGUE if n != "media")
        near = nearest(name, names)
        hint = f"did you mean {near!r}? " if near else ""
        raise UnknownPropertyError(
            f"unknown property {shown(name)} ({hint}known: {', '.join(names)}, media:DEVICE)"
        )
    return entry


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """Return the choice nearest to `word`, case aside (`MEMORY` is near `memory`), or None where none is near."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    near = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return by_lower[near[0]] if near else None


def size_text(n: int) -> str:
    """Return a number of bytes as people read it: in the largest binary unit that divides it exactly.

    `8589934592` is `8GiB`, `1536 * 2**20` is `1536MiB`, and `1000` is `1000B`:
    exact, so that neither a message nor a table rounds a value.  A size
    given in decimal units that no binary unit shows shorter keeps them:
    `4 * 10**9` is `4GB`, not `3906250KiB`.
    """
    # The fewest digits wins; on a tie, the binary unit (listed first).
    shown = [(len(str(n // scale)), rank, f"{n // scale}{unit}") for rank, (unit, scale) in enumerate(
        (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
         ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))) if n and n % scale == 0]
    return min(shown)[2] if shown else f"{n}B"


def shown(value: object, limit: int = 60) -> str:
    """Return `repr(value)` cut to about `limit` characters, for one-line error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(what: str, text: object, limit: int, *, allow_empty: bool = False) -> str:
    """Return `text` if it is a string of at most `limit` characters that `TEXT_RULE` allows.

    Raises:
        InvalidRequestError: naming `what` and the rule it breaks.
    """
    if not isinstance(text, str):
        raise InvalidRequestError(f"{what} must be text, not {type(text).__name__}")
    if not text and not allow_empty:
        raise InvalidRequestError(f"{what} must not be empty")
    if len(text) > limit:
        raise InvalidRequestError(f"{what} is longer than {limit} characters")
    if text.isascii() and text.isprintable():  # holds none of them: most text takes no look per character
        return text
    bad = next((c for c in text if c in _BIDI_CONTROLS or unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{what} must not contain U+{ord(bad):04X} (no control characters, line separators, "
            "bidi controls or lone surrogates)")
    return text


def check_request_id(request_id: object) -> str:
    """Return `request_id` if it is valid: 1 to 128 characters of text.

    Raises:
        InvalidRequestError: it is not.
    """
    return check_text("request id", request_id, MAX_REQUEST_ID_LENGTH)


def check_principal(principal: object) -> str:
    """Return `principal` if it is valid: 1 to 128 characters of text.

    Raises:
        InvalidRequestError: it is not.
    """
    return check_text("principal", principal, MAX_PRINCIPAL_LENGTH)


def check_reason(reason: object) -> str:
    """Return `reason` if it is valid: 1 to 1024 characters of text.

    Raises:
        InvalidRequestError: it is not.
    """
    return check_text("reason", reason, MAX_REASON_LENGTH)


def check_position(position: object) -> int:
    """Return `position` if it is a whole number from 0 to `MAX_POSITION`.

    Raises:
        InvalidRequestError: it is not.
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise InvalidRequestError(f"a log position must be a whole number, not {shown(position)}")
    if not 0 <= position <= MAX_POSITION:
        raise InvalidRequestError(f"a log position must be between 0 and {MAX_POSITION}")
    return position


def check_page(limit: object, offset: object) -> None:
    """Check a page of a list: at most `limit` items (None for all) from the `offset`th (0 the first).

    Raises:
        InvalidRequestError: `limit` is not an integer from 1 or `offset` not one from 0 (to 2**62).
    """
    for value, least, what in ((1 if limit is None else limit, 1, "limit"), (offset, 0, "offset")):
        if type(value) is not int or not least <= value <= 2**62:
            raise InvalidRequestError(f"{what} must be an integer from {least} to 2**62, not {shown(value)}")


def check_seconds(what: str, value: object) -> float:
    """Return `value` as a float if it is a finite number of seconds above 0.

    Raises:
        InvalidRequestError: naming `what`, when it is not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidRequestError(f"{what} must be a finite number of seconds above 0, not {shown(value)}")
    return float(value)


def check_name(name: object) -> str:
    """Return `name` if it is a valid domain name.

    A domain name is 1 to 64 characters, letters, digits and `._-`, not starting with `-`.

    Raises:
        InvalidRequestError: the name breaks those limits.
    """

    text = check_text("domain name", name, MAX_NAME_LENGTH)
    if text.startswith("-") or not all(c.isascii() and (c.isalnum() or c in "._-") for c in text):
        raise InvalidRequestError(
            f"invalid domain name {text!r}: use ASCII letters, digits, '.', '_' and '-', not '-' first"
        )
    return text


def check_device(device: object) -> str:
    """Return `device` if it is a valid device name (1 to 32 letters and digits).

    Raises:
        InvalidRequestError: the device name breaks those limits.
    """

    text = check_text("device name", device, MAX_DEVICE_LENGTH)
    if not all(c.isascii() and c.isalnum() for c in text):
        raise InvalidRequestError(f"invalid device name {text!r}: use letters and digits")
    return text


def check_value(prop: Property, value: object) -> Value:
    """Return `value` if its shape fits `prop`; business bounds are left to decisions.

    Raises:
        InvalidRequestError: wrong type, negative, absurdly large, or a bad path.
    """

    if prop.type in ("bytes", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(f"{prop.name} must be a whole number, not {shown(value)}")
        limit = MAX_BYTES if prop.type == "bytes" else MAX_COUNT
        if value < 0 or value > limit:
            raise InvalidRequestError(f"{prop.name} must be between 0 and {limit}")
        return value
    if prop.type == "path":
        text = check_text("media path", value, MAX_PATH_LENGTH, allow_empty=True)
        if text and not text.startswith("/"):
            raise InvalidRequestError(f"media path must be absolute, not {shown(text)}")
        return text
    return check_text(prop.name, value, MAX_STATE_LENGTH)
