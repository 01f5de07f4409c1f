"""The text rule, held to its definition character by character."""

from __future__ import annotations

import unicodedata

from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmledger.eventstore.catalogue import check_text
from vmledger.eventstore.errors import InvalidRequestError

_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _by_definition(text: str) -> str | None:
    """Return the first character the rule forbids (a control, surrogate, line or paragraph separator, bidi control)."""
    return next((c for c in text if c in _BIDI or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")), None)


def _checked(text: str) -> str:
    try:
        return "ok " + check_text("a reason", text, 10_000, allow_empty=True)
    except InvalidRequestError as e:
        return str(e)


@settings(database=None, max_examples=300)
@given(st.text() | st.text(st.characters(max_codepoint=0x7F)) | st.text(st.sampled_from(f"ab \t\x7f\x85{_BIDI}")))
@example("plain ascii, with spaces ~")
@example("tab\there")
@example("del\x7f")
@example("line\u2028break")
def test_check_text_accepts_exactly_the_text_without_a_forbidden_character(text: str) -> None:
    """check_text accepts a text exactly when no character of it is forbidden, and names the first that is."""
    bad = _by_definition(text)
    expected = "ok " + text if bad is None else (
        f"a reason must not contain U+{ord(bad):04X} (no control characters, line separators, "
        "bidi controls or lone surrogates)")
    assert _checked(text) == expected
