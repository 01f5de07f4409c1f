"""Error messages say what happened in words a caller can act on."""

from __future__ import annotations

from vmledger.eventstore.errors import ConcurrencyError


def test_a_request_that_lost_every_race_says_so() -> None:
    """A ConcurrencyError with a detail puts the detail first and keeps the last conflict's versions (issue #6)."""
    error = ConcurrencyError("u1", 56, 57, detail="gave up after 20 attempts: other writers changed domain 'a' each time")
    assert (str(error), error.stream, error.expected, error.actual) == (
        "gave up after 20 attempts: other writers changed domain 'a' each time"
        " (last: stream u1 is at version 57, not the expected 56)", "u1", 56, 57)


def test_the_command_line_logs_a_line_each_and_only_its_own_tracebacks() -> None:
    """Another library's warning (asyncpg's pool reconnecting) is one line on stderr; vmledger's own keeps its traceback, and --debug every one's."""
    import logging

    from vmledger.cli import _LogLine

    try:
        raise OSError("the database system is shutting down")
    except OSError:
        import sys
        exc_info = sys.exc_info()

    def shown(name: str, debug: bool) -> list[str]:
        record = logging.LogRecord(name, logging.WARNING, __file__, 1, "Failed to restore the pool; retrying", (),
                                   exc_info)
        return _LogLine(debug=debug).format(record).splitlines()

    assert shown("asyncpg.pool", debug=False) == ["vmledger: Failed to restore the pool; retrying"]
    assert [len(shown(name, debug)) > 3 for name, debug in (("asyncpg.pool", True), ("vmledger", False))] == [
        True, True]
    assert shown("vmledger", False)[-1] == "OSError: the database system is shutting down"
