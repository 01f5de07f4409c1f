"""The feed's filters again with `--url` against a real `vmledger serve`: same output, same exit codes (issue 17)."""

from __future__ import annotations

from tests.e2e.test_cli_remote import cli  # noqa: F401 - the remote fixture, collected with the tests below
from tests.e2e.test_event_filters_cli import test_events_filtered_by_domain_type_and_period  # noqa: F401
