"""Error messages say what happened in words a caller can act on."""

from __future__ import annotations

from vmledger.eventstore.errors import ConcurrencyError


def test_a_request_that_lost_every_race_says_so() -> None:
    """A ConcurrencyError with a detail puts the detail first and keeps the last conflict's versions (issue #6)."""
    error = ConcurrencyError("u1", 56, 57, detail="gave up after 20 attempts: other writers changed domain 'a' each time")
    assert (str(error), error.stream, error.expected, error.actual) == (
        "gave up after 20 attempts: other writers changed domain 'a' each time"
        " (last: stream u1 is at version 57, not the expected 56)", "u1", 56, 57)
