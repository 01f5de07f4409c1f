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
    StorageError,
    UnknownDomainError,
    UnknownPropertyError,
    VmledgerError,
)
from vmledger._checkpoint import Checkpoint
from vmledger._compose import open
from vmledger.ledger import Ledger

__all__ = [
    "open",
    "Ledger",
    "Checkpoint",
    "VmledgerError",
    "InvalidRequestError",
    "UnknownDomainError",
    "UnknownPropertyError",
    "ConcurrencyError",
    "ChainBrokenError",
    "StorageError",
    "HypervisorError",
]

__version__ = "0.1.0"
