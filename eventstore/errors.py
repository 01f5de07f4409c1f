"""The error types of vmledger; every one derives from `VmledgerError`."""

from __future__ import annotations

__all__ = [
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


class VmledgerError(Exception):
    """Raised when vmledger cannot do what it was asked; the base of all its errors."""


class InvalidRequestError(VmledgerError):
    """Raised when a request cannot be parsed or is malformed; nothing is written."""


class UnknownDomainError(InvalidRequestError):
    """Raised when a request names a domain that is not defined; nothing is written."""


class UnknownPropertyError(InvalidRequestError):
    """Raised when a request names a property the catalogue or domain lacks; nothing is written."""


class UnknownRequestError(InvalidRequestError):
    """Raised when a request id names no recorded request; nothing is written."""


class UnknownTokenError(InvalidRequestError):
    """Raised when a token name names no token of the service; nothing is written."""


class TokenExistsError(InvalidRequestError):
    """Raised when a new token's name is taken by a token already; nothing is written."""


class LedgerNotFoundError(InvalidRequestError):
    """Raised when the ledger a command names does not exist and the command may not create one."""


class NotALedgerError(InvalidRequestError):
    """Raised when a database holds data but no vmledger ledger, so vmledger neither reads nor writes it."""


class RequestIdReusedError(InvalidRequestError):
    """Raised when a request id (idempotency key) was already used for another request; nothing is written."""


class ConcurrencyError(VmledgerError):
    """Raised when a stream moved past the version an append expected."""

    def __init__(self, stream: str, expected: int, actual: int, *, detail: str | None = None) -> None:
        conflict = f"stream {stream} is at version {actual}, not the expected {expected}"
        super().__init__(f"{detail} (last: {conflict})" if detail else conflict)
        self.stream = stream
        self.expected = expected
        self.actual = actual


class ChainBrokenError(VmledgerError):
    """Raised when the hash chain or the projections disagree with the stored log."""

    def __init__(self, position: int, detail: str) -> None:
        super().__init__(f"ledger damaged at position {position}: {detail}")
        self.position = position
        self.detail = detail


class DamagedExportError(InvalidRequestError, ChainBrokenError):
    """Raised when the chain of an export being imported breaks: the file is damaged, not the ledger; nothing is written.

    A `ChainBrokenError` too, naming the position, and an invalid request:
    its message names the line.
    """

    def __init__(self, position: int, detail: str, line: int) -> None:
        ChainBrokenError.__init__(self, position, detail)
        Exception.__init__(self, f"line {line}: the export is damaged at position {position}: {detail}")
        self.line = line


class StorageError(VmledgerError):
    """Raised when the storage backend fails (locked, full, read-only, unreachable)."""


class LockTimeoutError(StorageError):
    """Raised when a lock the ledger's writing processes share stays held by another process longer than allowed.

    `seconds` is how long it was waited for.
    """

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class HypervisorError(VmledgerError):
    """Raised when the hypervisor cannot perform a lifecycle operation (define, start, stop)."""


class HypervisorRefusedError(HypervisorError):
    """Raised by an adapter when the hypervisor refuses a persistent change for a reason of the catalogue.

    `reason` is the `Reason` value (`out_of_range`, say): the ledger records the
    change refused for it, where any other `HypervisorError` records it failed.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
