"""The timeline chart's series: every time once and in order, values held from their last change, each mark in place."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vmledger.console.views import OUTCOMES, Timeline, chart
from vmledger.eventstore.catalogue import Outcome as Event
from vmledger.results import Outcome, RequestRecord

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: Every status a record's outcome takes, as the fold writes it: `in_flight` while it awaits the outcome.
STATUSES = tuple(e.status for e in Event)
MiB = 2**20


def _at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@st.composite
def timelines(draw: Any) -> tuple[Timeline, list[tuple[int, Any, Any]], list[tuple[int, str, int]]]:
    """Return a memory timeline, its steps and its marks (time, outcome or `observed`, MiB), in seconds from T0."""
    mib = st.integers(1, 4096)
    steps = sorted(draw(st.lists(st.tuples(st.integers(0, 100), st.none() | mib, st.none() | mib), max_size=8)),
                   key=lambda s: s[0])
    times = draw(st.lists(st.integers(0, 100), unique=True, max_size=10))
    marks = [(t, draw(st.sampled_from(("observed", *STATUSES))), draw(mib)) for t in times]
    requests, observed = [], []
    for i, (t, kind, value) in enumerate(marks):
        if kind == "observed":
            observed.append((_at(t), "live", value * MiB))
            continue
        # The mark is the most notable outcome of the request's scopes: the persistent one never outranks it here.
        outcomes = {"persistent": Outcome(status="applied", value=value * MiB, reason=None, message=None),
                    "live": Outcome(status=kind, value=value * MiB, reason=None, message=None)}
        requests.append(RequestRecord(request_id=f"r{i}", domain="d", property="memory", requested=value * MiB,
                                      scope="both", principal="p", reason=None, requested_at=_at(t), completed_at=None,
                                      position=i, outcomes=outcomes))
    values = [(_at(t), None if p is None else p * MiB, None if l is None else l * MiB) for t, p, l in steps]
    return Timeline(values=values, requests=requests, observed=observed), steps, marks


@given(timelines())
def test_the_chart_holds_each_value_from_its_last_change_and_each_mark_at_its_time(case: Any) -> None:
    """Times ascend once each; persistent and live are the last step's at or before each time; each mark is at its time."""
    timeline, steps, marks = case
    got = chart(timeline, "memory")
    xs = sorted({t for t, *_ in steps} | {t for t, _, _ in marks})
    expected: dict[str, list[Any]] = {"persistent": [], "live": [], **{k: [] for k in (*OUTCOMES, "observed")}}
    for x in xs:
        held = [s for s in steps if s[0] <= x]
        expected["persistent"].append(float(held[-1][1]) if held and held[-1][1] is not None else None)
        expected["live"].append(float(held[-1][2]) if held and held[-1][2] is not None else None)
        for key in (*OUTCOMES, "observed"):
            expected[key].append(next((float(v) for t, k, v in marks if t == x and k == key), None))
    assert got == {"x": [_at(x).timestamp() for x in xs], "series": expected, "unit": "MiB"}


def test_a_property_without_numbers_has_no_chart() -> None:
    """A CD-ROM's media is a path: its timeline is shown as tables only."""
    assert chart(Timeline(values=[], requests=[], observed=[]), "media:hdc") is None
