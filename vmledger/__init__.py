"""vmledger: an event-sourced ledger of virtual-machine configuration.

`async with vmledger.open("sqlite:///ledger.db") as ledger:` then `define`,
`start`, `set`, `get`, `show`, `drift`, `history`, `subscribe`, `observe`,
`rebuild`, `verify` and `checkpoint`, and `replay` and `follow` to feed a
`Projection` of one's own; `vmledger.connect(url, token=...)`
gives the same methods over HTTP, against `vmledger serve`.
"""

from typing import Any

from vmledger.eventstore.errors import (
    ChainBrokenError,
    ConcurrencyError,
    DamagedExportError,
    HypervisorError,
    HypervisorRefusedError,
    InvalidRequestError,
    LedgerNotFoundError,
    LockTimeoutError,
    NotALedgerError,
    RequestIdReusedError,
    StorageError,
    UnknownDomainError,
    UnknownPropertyError,
    UnknownRequestError,
    UnknownTokenError,
    TokenExistsError,
    VmledgerError,
)
from vmledger._checkpoint import Checkpoint
from vmledger._compose import open
from vmledger.ledger import Ledger, default_principal
from vmledger.replay import Projection
from vmledger.results import DomainView, DriftRow, Outcome, PropertyRow, PropertyValue, RequestRecord
from vmledger.results import AuditReport, ConfigDiff, RevertReport

__all__ = [
    "open",
    "connect",
    "Ledger",
    "Checkpoint",
    "Projection",
    "default_principal",
    "RequestRecord",
    "Outcome",
    "DomainView",
    "PropertyRow",
    "DriftRow",
    "PropertyValue",
    "AuditReport",
    "ConfigDiff",
    "RevertReport",
    "VmledgerError",
    "InvalidRequestError",
    "UnknownDomainError",
    "UnknownPropertyError",
    "UnknownRequestError",
    "UnknownTokenError",
    "TokenExistsError",
    "LedgerNotFoundError",
    "NotALedgerError",
    "RequestIdReusedError",
    "ConcurrencyError",
    "ChainBrokenError",
    "DamagedExportError",
    "StorageError",
    "HypervisorError",
    "HypervisorRefusedError",
    "LockTimeoutError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `connect` needs httpx (the `serve` extra): imported on first use, so `open` works without it.
    if name == "connect":
        try:
            from vmledger.remote import connect
        except ImportError as e:
            raise InvalidRequestError(f"vmledger.connect needs httpx ({e}): pip install 'vmledger[serve]'") from e
        return connect
    raise AttributeError(f"module 'vmledger' has no attribute {name!r}")
