"""The limits on what a request may carry, each enforced by the catalogue (issue #6)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger.eventstore.catalogue import (
    CATALOGUE,
    MAX_POSITION,
    check_name,
    check_position,
    check_principal,
    check_reason,
    check_request_id,
    check_value,
    lookup,
    nearest,
)
from vmledger.eventstore.errors import InvalidRequestError, UnknownPropertyError


def _media(path: object) -> object:
    return check_value(CATALOGUE["media"], path)


CHECKS: dict[str, Callable[[object], object]] = {
    "media path": lambda t: _media("/iso/" + t),  # type: ignore[operator]
    "request id": lambda t: check_request_id("r-" + t),  # type: ignore[operator]
    "principal": lambda t: check_principal("alice" + t),  # type: ignore[operator]
    "reason": lambda t: check_reason("why" + t),  # type: ignore[operator]
}
FORBIDDEN = {
    "NUL": "\x00", "escape": "\x1b", "DEL": "\x7f", "C1 next line": "\x85", "C1 CSI": "\x9b",
    "line separator": "\u2028", "paragraph separator": "\u2029", "right-to-left override": "\u202e",
    "left-to-right embedding": "\u202a", "first strong isolate": "\u2068", "lone surrogate": "\udcff",
}


@pytest.mark.parametrize("field", sorted(CHECKS))
@pytest.mark.parametrize("char", sorted(FORBIDDEN), ids=str)
def test_text_rejects_control_separator_and_bidi_characters(field: str, char: str) -> None:
    """A control character (C1 included), line separator, bidi control or surrogate in request text is invalid (issue #6)."""
    with pytest.raises(InvalidRequestError) as caught:
        CHECKS[field](FORBIDDEN[char])
    assert str(caught.value) == (
        f"{field} must not contain U+{ord(FORBIDDEN[char]):04X} "
        "(no control characters, line separators, bidi controls or lone surrogates)")


@pytest.mark.parametrize("field", sorted(CHECKS))
def test_text_keeps_right_to_left_marks_and_combining_characters(field: str) -> None:
    """Right-to-left text with its marks, combining characters and emoji pass unchanged."""
    text = "\u05e9\u05dc\u05d5\u05dd\u200f e\u0301 \U0001f600"
    assert CHECKS[field](text) == {"media path": "/iso/", "request id": "r-", "principal": "alice",
                                   "reason": "why"}[field] + text


@pytest.mark.parametrize("field,limit", [("request id", 128), ("principal", 128), ("reason", 1024)])
def test_text_longer_than_its_limit_is_invalid(field: str, limit: int) -> None:
    """Request ids and principals hold 128 characters, reasons 1024; one more is invalid."""
    check = {"request id": check_request_id, "principal": check_principal, "reason": check_reason}[field]
    assert check("x" * limit) == "x" * limit
    with pytest.raises(InvalidRequestError, match=f"^{field} is longer than {limit} characters$"):
        check("x" * (limit + 1))


@pytest.mark.parametrize("name", ["web/x", "../web", "-web", "w\u00e9b", "web\x00", "", "x" * 65, " web"])
def test_domain_names_outside_the_rule_are_invalid(name: str) -> None:
    """A domain name with a slash, a leading dash, non-ASCII, NUL, nothing or 65 characters is invalid."""
    with pytest.raises(InvalidRequestError):
        check_name(name)


@pytest.mark.parametrize("name", [None, 5, 1.5, ["memory"], b"memory"], ids=repr)
def test_a_property_name_that_is_not_text_is_invalid(name: Any) -> None:
    """A property name of another type is an InvalidRequestError, not an AttributeError (issue #6)."""
    with pytest.raises(InvalidRequestError, match="^a property name must be text, not "):
        lookup(name)


def test_an_unknown_property_is_named_in_one_short_line() -> None:
    """An overlong unknown property name is cut in the message, which stays one line."""
    with pytest.raises(UnknownPropertyError) as caught:
        lookup("x\n" * 5000)
    assert (len(str(caught.value)) < 200, "\n" in str(caught.value)) == (True, False)


@pytest.mark.parametrize("position", [-1, MAX_POSITION + 1, 2**80, 1.0, float("nan"), True, "3", None], ids=repr)
def test_positions_outside_the_log_range_are_invalid(position: Any) -> None:
    """A log position must be a whole number from 0 to 2**63 - 1 (issue #6)."""
    with pytest.raises(InvalidRequestError, match="^a log position must be "):
        check_position(position)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_:", min_size=1, max_size=12), min_size=1, max_size=8,
                unique=True), st.data())
def test_the_nearest_name_is_found_whatever_its_case(choices: list[str], data: st.DataObject) -> None:
    """A name given in another case than the known one (`MEMORY`, `Web`) names the known one; any answer is a choice."""
    chosen = data.draw(st.sampled_from(choices))
    asked = data.draw(st.sampled_from([chosen.upper(), chosen.title(), chosen.swapcase(), chosen]))
    near = nearest(asked, choices)
    assert near is not None and near.lower() == chosen.lower()
    other = nearest(data.draw(st.text(max_size=12)), choices)
    assert other is None or other in choices
