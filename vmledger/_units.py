"""Parsing and printing of values at the edge: sizes such as `2GiB`, counts, times."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from eventstore.catalogue import MAX_POSITION, Property, check_position, shown
from eventstore.errors import InvalidRequestError

__all__ = ["parse_size", "format_size", "parse_value", "format_value", "parse_time", "parse_count", "parse_position",
           "parse_as_of"]

_UNITS = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,9}))? ?(B|KiB|MiB|GiB|TiB)?")


def parse_size(text: str) -> int:
    """Return the bytes a size such as `1073741824`, `512MiB` or `1.5GiB` names.

    Raises:
        InvalidRequestError: not a non-negative whole number of bytes with a binary unit.
    """
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise InvalidRequestError(
            f"invalid size {shown(text)}: use bytes or a binary unit, e.g. 1073741824, 512MiB, 2GiB")
    whole, frac, unit = m.group(1), m.group(2) or "", m.group(3) or ""
    scale = _UNITS[unit]
    numerator = int(whole + frac) * scale
    denominator = 10 ** len(frac)
    if numerator % denominator:
        raise InvalidRequestError(f"invalid size {shown(text)}: not a whole number of bytes")
    return numerator // denominator


def format_size(n: int | None) -> str:
    """Return a size in the largest binary unit that divides it exactly."""
    if n is None:
        return "-"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


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
        if not re.fullmatch(r"[0-9]{1,19}", stripped) or int(stripped) > MAX_POSITION:
            raise InvalidRequestError(
                f"invalid log position {shown(text)}: use a whole number from 0 to {MAX_POSITION}, "
                "or an ISO 8601 time")
        return int(stripped)
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
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
