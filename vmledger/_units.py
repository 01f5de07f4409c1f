"""Parsing and printing of values at the edge: sizes such as `2GiB`, counts, times."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from vmledger.eventstore.catalogue import MAX_POSITION, Property, check_position, shown, size_text
from vmledger.eventstore.errors import InvalidRequestError

__all__ = ["SIZE_RULE", "parse_size", "format_size", "parse_value", "format_value", "parse_time", "parse_count", "parse_position",
           "parse_as_of"]

#: libvirt's scaled-integer units (virScaleInteger), matched without regard to case: a bare
#: letter or `<letter>iB` is a power of 1024, `<letter>B` a power of 1000.
_PREFIXES = "kmgtpe"
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1}
for _i, _p in enumerate(_PREFIXES, start=1):
    _UNITS.update({_p: 1024**_i, _p + "ib": 1024**_i, _p + "b": 1000**_i})
_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,9}))? ?([A-Za-z]{1,5})?")

#: The rule for sizes, as the errors and `--help` state it.
SIZE_RULE = ("sizes are bytes (1073741824) or a number with a unit as libvirt takes them, in any case: "
             "K, M, G, T (or KiB, MiB, GiB, TiB) are powers of 1024, KB, MB, GB, TB powers of 1000; "
             "e.g. 512M, 2GiB, 8GB, 1.5G")


def parse_size(text: str) -> int:
    """Return the bytes a size such as `1073741824`, `512MiB`, `2G`, `8GB` or `1.5GiB` names.

    Units are libvirt's: `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (and
    `P`, `E`) are powers of 1024, `KB`, `MB`, `GB`, `TB` powers of 1000,
    `B` is bytes, in any case.

    Raises:
        InvalidRequestError: not a non-negative whole number of bytes with such a unit.
    """
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    scale = _UNITS.get((m.group(3) or "").lower()) if m else None
    if m is None or scale is None:
        raise InvalidRequestError(f"invalid size {shown(text)}: {SIZE_RULE}")
    whole, frac = m.group(1), m.group(2) or ""
    numerator = int(whole + frac) * scale
    denominator = 10 ** len(frac)
    if numerator % denominator:
        raise InvalidRequestError(f"invalid size {shown(text)}: not a whole number of bytes")
    return numerator // denominator


def format_size(n: int | None) -> str:
    """Return a size in the largest binary unit that divides it exactly (`-` for None)."""
    return "-" if n is None else size_text(n)


def parse_count(text: str, what: str = "count") -> int:
    """Return a whole, non-negative number.

    Raises:
        InvalidRequestError: anything else.
    """
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,9}", text.strip()):
        raise InvalidRequestError(f"invalid {what} {shown(text)}: use a whole number")
    return int(text)


def parse_position(text: str) -> int:
    """Return the log position a command-line argument names.

    Raises:
        InvalidRequestError: not a whole number from 0 to 2**63 - 1.
    """
    digits = text.strip() if isinstance(text, str) else ""
    # More digits than a 64-bit position holds are refused before int() reads them.
    if not re.fullmatch(r"[0-9]{1,19}", digits):
        raise InvalidRequestError(f"invalid log position {shown(text)}: use a whole number from 0 to {MAX_POSITION}")
    return check_position(int(digits))


def parse_as_of(text: str) -> int | datetime:
    """Return the log position or the time an `--as-of` argument names.

    Raises:
        InvalidRequestError: a number that is no position, or text that is no ISO 8601 time.
    """
    stripped = text.strip() if isinstance(text, str) else ""
    if re.fullmatch(r"[-+]?[0-9][0-9.,_]*", stripped):
        if not re.fullmatch(r"[0-9]{1,19}", stripped):
            raise InvalidRequestError(
                f"invalid log position {shown(text)}: use a whole number from 0 to {MAX_POSITION}, "
                "or an ISO 8601 time")
        return parse_position(stripped)
    return parse_time(text)


def parse_value(prop: Property, text: str) -> int | str:
    """Return the typed value a command-line argument gives for `prop`."""
    if prop.type == "bytes":
        return parse_size(text)
    if prop.type == "count":
        return parse_count(text, prop.name)
    return text


def format_value(prop: Property | None, value: object) -> str:
    """Return a value as people read it: sizes with units, empty media as `(empty)`."""
    if value is None:
        return "-"
    if prop is not None and prop.type == "bytes" and isinstance(value, int):
        return format_size(value)
    if value == "":
        return "(empty)"
    return str(value)


def parse_time(text: str) -> datetime:
    """Return the UTC time an ISO-8601 text names (a time without zone is taken as UTC).

    Raises:
        InvalidRequestError: not an ISO-8601 time.
    """
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidRequestError(f"invalid time {shown(text)}: use ISO 8601, e.g. 2026-01-31T12:00:00Z") from e
    try:
        return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except OverflowError as e:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise InvalidRequestError(f"invalid time {shown(text)}: out of range in UTC") from e
