"""vmledger: an event-sourced ledger of virtual-machine configuration.

`async with vmledger.open("sqlite:///ledger.db") as ledger:` then `define`,
`start`, `set`, `get`, `show`, `drift`, `history`, `subscribe`, `observe`,
`rebuild`, `verify` and `checkpoint`.
"""

from eventstore.errors import (
    ChainBrokenError,
    ConcurrencyError,
    HypervisorError,
    InvalidRequestError,
    LedgerNotFoundError,
    NotALedgerError,
    StorageError,
    UnknownDomainError,
    UnknownPropertyError,
    VmledgerError,
)
from vmledger._checkpoint import Checkpoint
from vmledger._compose import open
from vmledger.ledger import Ledger, default_principal
from vmledger.results import DomainView, DriftRow, Outcome, PropertyRow, PropertyValue, RequestRecord

__all__ = [
    "open",
    "Ledger",
    "Checkpoint",
    "default_principal",
    "RequestRecord",
    "Outcome",
    "DomainView",
    "PropertyRow",
    "DriftRow",
    "PropertyValue",
    "VmledgerError",
    "InvalidRequestError",
    "UnknownDomainError",
    "UnknownPropertyError",
    "LedgerNotFoundError",
    "NotALedgerError",
    "ConcurrencyError",
    "ChainBrokenError",
    "StorageError",
    "HypervisorError",
]

__version__ = "0.1.0"
