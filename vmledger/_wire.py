"""What the HTTP service and the remote client agree on: the JSON of results and events, and error codes.

Both sides import this one module, so an error raised by the ledger behind
a server is raised again, with the same class and message, by
`vmledger.connect()`'s client; and every result crosses the wire through
`plain()`, whatever shape the ledger returns it in.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from typing import Any, Mapping

import attrs

from vmledger.eventstore.codec import decode, encode, loads
from vmledger.eventstore.errors import (
    ChainBrokenError,
    ConcurrencyError,
    DamagedExportError,
    HypervisorError,
    HypervisorRefusedError,
    InvalidRequestError,
    RequestIdReusedError,
    StorageError,
    TokenExistsError,
    UnknownDomainError,
    UnknownPropertyError,
    UnknownRequestError,
    UnknownTokenError,
    VmledgerError,
)
from vmledger.eventstore.log import Metadata, RecordedEvent

__all__ = [
    "plain",
    "event_json",
    "event_from_json",
    "ErrorCode",
    "ERROR_CODES",
    "PROBLEM_TYPE",
    "error_code",
    "error_from_problem",
    "ForbiddenError",
    "UnauthorizedError",
    "PreconditionFailedError",
    "problem_of",
]

#: The prefix of every problem's `type` URI; the code follows it.
PROBLEM_TYPE = "urn:vmledger:problem:"


class UnauthorizedError(VmledgerError):
    """Raised when a server refuses a request without a valid bearer token (HTTP 401)."""


class ForbiddenError(VmledgerError):
    """Raised when a server refuses a request its token's role does not allow (HTTP 403)."""


class PreconditionFailedError(ConcurrencyError):
    """Raised when `If-Match` names a version the domain's stream has moved past (HTTP 412); nothing is written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(stream, expected, actual, detail="If-Match names an older version of the domain")


@attrs.frozen(kw_only=True)
class ErrorCode:
    """How one error class crosses the wire: its problem code and HTTP status."""

    code: str
    status: int
    title: str


#: Most specific first: the first class an error is an instance of names its code.
ERROR_CODES: dict[type[VmledgerError], ErrorCode] = {
    UnknownDomainError: ErrorCode(code="unknown_domain", status=404, title="Unknown domain"),
    UnknownPropertyError: ErrorCode(code="unknown_property", status=404, title="Unknown property"),
    UnknownRequestError: ErrorCode(code="unknown_request", status=404, title="Unknown request"),
    DamagedExportError: ErrorCode(code="damaged_export", status=422, title="The export is damaged"),
    UnknownTokenError: ErrorCode(code="unknown_token", status=404, title="Unknown token"),
    RequestIdReusedError: ErrorCode(code="request_id_reused", status=409,
                                    title="Request id already used for another request"),
    TokenExistsError: ErrorCode(code="token_exists", status=409, title="A token of that name exists"),
    InvalidRequestError: ErrorCode(code="invalid_request", status=422, title="Invalid request"),
    PreconditionFailedError: ErrorCode(code="precondition_failed", status=412, title="The domain moved"),
    ConcurrencyError: ErrorCode(code="concurrency", status=409, title="The domain's stream moved"),
    ChainBrokenError: ErrorCode(code="chain_broken", status=409, title="The ledger is damaged"),
    HypervisorError: ErrorCode(code="hypervisor_error", status=409, title="The hypervisor refused"),
    StorageError: ErrorCode(code="storage_error", status=503, title="The database failed"),
    UnauthorizedError: ErrorCode(code="unauthorized", status=401, title="No valid bearer token"),
    ForbiddenError: ErrorCode(code="forbidden", status=403, title="The token's role does not allow this"),
    VmledgerError: ErrorCode(code="error", status=409, title="The ledger could not do it"),
}
_BY_CODE = {c.code: cls for cls, c in ERROR_CODES.items()}


def error_code(error: VmledgerError) -> ErrorCode:
    """Return the problem code and status of a ledger error."""
    for cls, code in ERROR_CODES.items():
        if isinstance(error, cls):
            return code
    return ERROR_CODES[VmledgerError]


def problem_of(error: VmledgerError) -> dict[str, Any]:
    """Return the RFC 9457 problem document of a ledger error, with what its class needs to be raised again."""
    code = error_code(error)
    problem: dict[str, Any] = {"type": PROBLEM_TYPE + code.code, "title": code.title, "status": code.status,
                               "detail": str(error), "code": code.code}
    if isinstance(error, ChainBrokenError):
        problem["position"] = error.position
        problem["damage"] = error.detail
    if isinstance(error, DamagedExportError):
        problem["line"] = error.line
    if isinstance(error, ConcurrencyError):
        problem.update(stream=error.stream, expected=error.expected, actual=error.actual)
    if isinstance(error, HypervisorRefusedError):
        problem["reason"] = error.reason  # a refusal for a reason of the catalogue, not any failure
    return problem


def error_from_problem(problem: Mapping[str, Any], status: int) -> VmledgerError:
    """Return the error a problem document describes: the class its code names, with its message."""
    problem = problem if isinstance(problem, Mapping) else {}
    code, detail = problem.get("code"), problem.get("detail")
    if not isinstance(detail, str):  # a document of another server's, say: what it says instead
        detail = str(problem.get("title") or f"HTTP {status}")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is HypervisorError and isinstance(problem.get("reason"), str):
        return HypervisorRefusedError(detail, problem["reason"])
    if cls is None:
        cls = {401: UnauthorizedError, 403: ForbiddenError, 404: InvalidRequestError, 413: InvalidRequestError,
               422: InvalidRequestError}.get(status, StorageError if status >= 500 else VmledgerError)
    if cls is ChainBrokenError:
        return ChainBrokenError(int(problem.get("position", 0)), str(problem.get("damage", detail)))
    error = cls.__new__(cls)
    Exception.__init__(error, detail)
    if issubclass(cls, ConcurrencyError):
        error.stream, error.expected, error.actual = (
            problem.get("stream", ""), problem.get("expected", 0), problem.get("actual", 0))
    if issubclass(cls, DamagedExportError):
        error.position, error.detail, error.line = (
            int(problem.get("position", 0)), str(problem.get("damage", detail)), int(problem.get("line", 0)))
    return error


def segment(text: str) -> str:
    """Return `text` quoted as one URL path segment, `/` included.

    A segment `.` or `..` is quoted too (`%2E`), which no quoting function
    does: clients and browsers resolve it away, and would ask another URL.
    """
    quoted = urllib.parse.quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


#: The response header of a `set` whose request id was recorded before: it appended nothing.
REPLAYED_HEADER = "Idempotent-Replayed"


def plain(result: Any) -> Any:
    """Return a ledger result as JSON-ready data: a dict, an attrs class with `to_dict()`, a list of them, or an event."""
    if isinstance(result, RecordedEvent):
        return event_json(result)
    if hasattr(result, "to_dict"):
        return plain(result.to_dict())
    if isinstance(result, Mapping):
        return {k: plain(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return [plain(v) for v in result]
    if isinstance(result, datetime):
        return result.isoformat()
    return result


def event_json(rec: RecordedEvent) -> dict[str, Any]:
    """Return a recorded event as JSON data: the CLI's `events` keys, with its schema version and hash."""
    name, schema_version, data = encode(rec.event)
    return {"position": rec.position, "stream": rec.stream, "version": rec.version, "type": name,
            "schema_version": schema_version, "data": loads(data), "metadata": rec.metadata.to_dict(),
            "recorded_at": rec.recorded_at.isoformat(), "hash": rec.hash}


def event_from_json(data: Mapping[str, Any]) -> RecordedEvent:
    """Return the recorded event `event_json` made.

    Raises:
        StorageError: the data is not an event this vmledger can decode.
    """
    try:
        return RecordedEvent(
            position=int(data["position"]), stream=str(data["stream"]), version=int(data["version"]),
            event=decode(str(data["type"]), int(data["schema_version"]), dict(data["data"])),
            metadata=Metadata(**dict(data["metadata"])),
            recorded_at=datetime.fromisoformat(str(data["recorded_at"])), hash=str(data.get("hash", "")))
    except (KeyError, TypeError, ValueError) as e:
        raise StorageError(f"the server sent an event this client cannot read: {e}") from e
