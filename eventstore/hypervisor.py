"""What a hypervisor reports: the value types its adapters and the decisions share."""

from __future__ import annotations

from typing import Union

import attrs

from vmledger.eventstore.catalogue import Outcome, Reason

__all__ = ["LiveResult", "Observation", "DomainSpec"]

Value = Union[int, str]


@attrs.frozen(kw_only=True)
class LiveResult:
    """What really happened when the hypervisor was asked for a live change.

    `value` is the value the running domain has afterwards (None if unknown);
    `reason` and `message` explain a refusal or a failure.
    """

    outcome: Outcome
    value: Value | None
    reason: Reason | None = None
    message: str | None = None

    @classmethod
    def applied(cls, value: Value) -> "LiveResult":
        """Return a result for a change the domain took in full."""
        return cls(outcome=Outcome.APPLIED, value=value)

    @classmethod
    def partial(cls, value: Value, message: str | None = None) -> "LiveResult":
        """Return a result for a change the domain took only in part."""
        return cls(outcome=Outcome.PARTIALLY_APPLIED, value=value, message=message)

    @classmethod
    def refused(cls, value: Value | None, reason: Reason, message: str) -> "LiveResult":
        """Return a result for a change the hypervisor or guest would not make."""
        return cls(outcome=Outcome.REFUSED, value=value, reason=reason, message=message)

    @classmethod
    def failed(cls, value: Value | None, reason: Reason, message: str) -> "LiveResult":
        """Return a result for a change that broke down (error, timeout)."""
        return cls(outcome=Outcome.FAILED, value=value, reason=reason, message=message)


@attrs.frozen(kw_only=True)
class DomainSpec:
    """What a domain is defined with: its persistent config and guest type."""

    name: str
    uuid: str
    guest_type: str
    config: tuple  # tuple[tuple[str, Value], ...], incl. `media:DEV` entries
    capabilities: tuple  # tuple[tuple[str, bool | None], ...]


@attrs.frozen(kw_only=True)
class Observation:
    """A domain's state as the hypervisor reports it now."""

    running: bool
    live: tuple  # tuple[tuple[str, Value], ...]; empty when not running
    capabilities: tuple  # tuple[tuple[str, bool | None], ...]
    locked_trays: frozenset[str] = frozenset()
    #: False when the hypervisor cannot tell which trays are locked (libvirt but for QEMU): `locked_trays` says nothing.
    trays_known: bool = True
    #: The config the domain boots with next, as pairs; a property left out is not known.
    persistent: tuple = ()
    #: False when the hypervisor no longer has the domain (undefined behind the ledger's back).
    defined: bool = True
