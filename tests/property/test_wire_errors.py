"""Errors on the wire: a ledger error made a problem document and read back is the same error.

`vmledger serve` answers an error as its problem document (`problem_of`),
and `vmledger.connect()` raises what the document describes
(`error_from_problem`): the class, the message and what the class carries
must survive the trip, through JSON as HTTP sends it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger._wire import ERROR_CODES, PreconditionFailedError, error_code, error_from_problem, problem_of
from vmledger.eventstore.errors import (
    ChainBrokenError,
    ConcurrencyError,
    DamagedExportError,
    HypervisorRefusedError,
    VmledgerError,
)

_texts = st.text(max_size=40)
_counts = st.integers(0, 2**53)
_reasons = st.sampled_from(["out_of_range", "requires_restart", "tray_locked", "guest_unsupported", "read_only"])

#: How to make an error of each class, from drawn arguments.
_MAKERS: dict[type[VmledgerError], st.SearchStrategy[VmledgerError]] = {
    cls: st.builds(cls, _texts) for cls in ERROR_CODES
    if cls not in (ConcurrencyError, PreconditionFailedError, ChainBrokenError, DamagedExportError)
}
_MAKERS.update({
    ConcurrencyError: st.builds(ConcurrencyError, _texts, _counts, _counts, detail=st.none() | _texts),
    PreconditionFailedError: st.builds(PreconditionFailedError, _texts, _counts, _counts),
    ChainBrokenError: st.builds(ChainBrokenError, _counts, _texts),
    DamagedExportError: st.builds(DamagedExportError, _counts, _texts, _counts),
    HypervisorRefusedError: st.builds(HypervisorRefusedError, _texts, _reasons),
})
_ATTRIBUTES: dict[type[VmledgerError], Callable[[Any], tuple]] = {
    ConcurrencyError: lambda e: (e.stream, e.expected, e.actual),
    ChainBrokenError: lambda e: (e.position, e.detail),
    DamagedExportError: lambda e: (e.position, e.detail, e.line),
    HypervisorRefusedError: lambda e: (e.reason,),
}


@settings(database=None, deadline=None, max_examples=300)
@given(st.one_of(*_MAKERS.values()))
def test_an_error_read_back_from_its_problem_document_is_the_same_error(error: VmledgerError) -> None:
    """The class, the message and each attribute the class carries survive `problem_of`, JSON and `error_from_problem`."""
    problem = json.loads(json.dumps(problem_of(error)))
    back = error_from_problem(problem, error_code(error).status)
    carried = [f for cls, f in _ATTRIBUTES.items() if isinstance(error, cls)]
    assert (type(back), str(back), [f(back) for f in carried]) == (type(error), str(error), [f(error) for f in carried])
