"""The hypervisor port: one small async interface, an adapter per hypervisor."""

from __future__ import annotations

from typing import Protocol

from vmledger.eventstore.hypervisor import DomainSpec, LiveResult, Observation, Value

__all__ = ["Hypervisor", "Adoptable", "Pingable"]


class Hypervisor(Protocol):
    """What vmledger needs of a hypervisor.

    Domains are addressed by name.  Every method is a coroutine; an adapter
    whose library blocks runs it in a thread.  Lifecycle methods raise
    `HypervisorError` when the hypervisor refuses; `apply_live` never raises
    for a refusal or a fault, it reports one in its `LiveResult`.
    """

    async def define(self, spec: DomainSpec) -> None:
        """Define a domain with its persistent config."""
        ...

    async def undefine(self, name: str) -> None:
        """Remove a stopped domain's definition."""
        ...

    async def start(self, name: str) -> tuple:
        """Boot the domain from its persistent config; return its live config as pairs."""
        ...

    async def stop(self, name: str) -> None:
        """Shut the domain off."""
        ...

    async def apply_persistent(self, name: str, prop: str, value: Value) -> None:
        """Write one value into the persistent config the domain boots with next.

        Raises:
            HypervisorRefusedError: the hypervisor refused the value, for its `reason` (recorded refused).
            HypervisorError: the write failed (recorded failed).
        """
        ...

    async def apply_live(self, name: str, prop: str, value: Value) -> LiveResult:
        """Ask the running domain for a live change and report what really happened."""
        ...

    async def observe(self, name: str) -> Observation:
        """Report the domain's live state, capabilities and tray locks."""
        ...

    async def aclose(self) -> None:
        """Release the adapter's resources."""
        ...


class Pingable(Protocol):
    """A hypervisor that can say whether it answers at all, whatever domains it has (for `/readyz`)."""

    async def ping(self) -> None:
        """Return once the hypervisor answers a cheap call; raise `HypervisorError` if it cannot."""
        ...


class Adoptable(Protocol):
    """A hypervisor that can describe the domains it already has, so the ledger can adopt them."""

    async def list_domains(self) -> list[str]:
        """Return the names of every domain the hypervisor defines."""
        ...

    async def describe(self, name: str) -> DomainSpec:
        """Return a domain's name, UUID, guest type, inactive config and capabilities."""
        ...
