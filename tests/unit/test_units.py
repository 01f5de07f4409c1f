"""Sizes, counts and times as the command line accepts and prints them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings, strategies as st

from vmledger.eventstore.errors import InvalidRequestError
from vmledger._units import format_size, parse_count, parse_size, parse_time


@pytest.mark.parametrize("text,expected", [
    ("1073741824", 2**30), ("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5GiB", 3 * 2**29),
    ("4KiB", 4096), ("1TiB", 2**40), ("0", 0), ("7B", 7),
    # libvirt's scaled integers, as `virsh setmem web 2G` takes them (issue 18).
    ("1G", 2**30), ("2048M", 2048 * 2**20), ("1GB", 10**9), ("1gb", 10**9), ("1g", 2**30), ("1gib", 2**30),
    ("4k", 4096), ("4KB", 4000), ("3T", 3 * 2**40), ("3TB", 3 * 10**12), ("1.5G", 3 * 2**29),
    ("1P", 2**50), ("1PB", 10**15), ("2bytes", 2), ("1 MB", 10**6),
])
def test_parse_size(text: str, expected: int) -> None:
    """A size in bytes or a libvirt unit parses to its exact number of bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "-5", "", "1.5", "2Gi", "1 GiB x", "0.3B", "1e9", "NaN", "٣", "1GiBs", "2 G B",
                                  "1Kib2", "1.0000001K", "1gigabyte"])
def test_parse_size_rejects(text: str) -> None:
    """Anything but a non-negative whole number of bytes is an invalid request."""
    with pytest.raises(InvalidRequestError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**50))
def test_size_round_trip(n: int) -> None:
    """Printing a size and parsing it back gives the same number of bytes."""
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize("text", ["-1", "1.0", "x", "", "9999999999"])
def test_parse_count_rejects(text: str) -> None:
    """A count is a whole non-negative number of at most nine digits."""
    with pytest.raises(InvalidRequestError):
        parse_count(text)


def test_parse_time_defaults_to_utc() -> None:
    """A time without a zone is UTC, and a zone is converted to UTC."""
    assert parse_time("2026-01-31T12:00:00") == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_time("2026-01-31T13:00:00+01:00") == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_time("2026-01-31T12:00:00Z") == datetime(2026, 1, 31, 12, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_with_no_utc_time_is_an_invalid_request(text: str) -> None:
    """A time whose UTC one falls outside years 1 to 9999 is refused as input, not an overflow."""
    with pytest.raises(InvalidRequestError, match="out of range in UTC"):
        parse_time(text)
    assert parse_time(text[:19] + "Z").year == int(text[:4])  # the last UTC times at either end are times


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*+,;=%", min_size=4,
               max_size=20).filter(lambda p: "&" not in p),
       st.sampled_from(["postgresql://vm:{}@db.example:5432/ledger", "postgresql://vm:{}@/ledger?host=/run/pg",
                        "postgresql://db.example/ledger?user=vm&password={}&sslmode=require"]))
def test_a_database_url_is_shown_without_its_password(password: str, form: str) -> None:
    """Messages show a database URL with its password as `***`, and the rest as it was."""
    from vmledger._compose import redacted

    assert redacted(form.format(password)) == form.format("***")
    assert redacted("sqlite:///ledger.db") == "sqlite:///ledger.db"
