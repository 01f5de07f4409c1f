"""`vmledger plot`: a property's requested, persistent and live values over time, each request's outcome marked.

The values come from the domain's events folded by the one fold
(`eventstore.state.apply`), the requests from `history`; both through the
`Ledger` methods, so a remote ledger plots alike.  Drawing needs matplotlib
(the `plot` extra), imported only here.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

import attrs

from vmledger.eventstore.catalogue import lookup
from vmledger.eventstore.errors import InvalidRequestError
from vmledger.eventstore.hypervisor import Value
from vmledger.eventstore.state import DomainState, apply
from vmledger.results import RequestRecord
from vmledger import _units

__all__ = ["Timeline", "timeline", "render", "FORMATS", "STATUS_MARKERS"]

FORMATS = ("svg", "png")
#: How each outcome is marked: matplotlib marker and colour.
STATUS_MARKERS = {"applied": ("o", "tab:green"), "partial": ("D", "tab:orange"), "refused": ("X", "tab:red"),
                  "failed": ("s", "black"), "in_flight": ("^", "tab:gray")}
#: Requests labelled with their values and outcomes, at most; beyond it only their markers are drawn.
_LABELLED = 30


@attrs.frozen(kw_only=True)
class Timeline:
    """What a plot shows: the values in force after each of the domain's events, and the requests."""

    domain: str
    property: str
    #: (time, persistent value, live value) after each event; None where the config has no value.
    points: tuple[tuple[datetime, Value | None, Value | None], ...]
    requests: tuple[RequestRecord, ...]


async def timeline(ledger: Any, name: str, prop: str) -> Timeline:
    """Return the timeline of `prop` of the domains that bore `name`.

    Raises:
        UnknownDomainError: no domain ever had that name.
        UnknownPropertyError: no such property.
    """
    lookup(prop)
    states: dict[str, DomainState] = {}
    points = []
    async for rec in ledger.events(domain=name):
        state = states[rec.stream] = apply(states.get(rec.stream), rec)
        persistent = state.persistent.get(prop) if state.defined else None
        live = state.live.get(prop) if state.running else None
        points.append((rec.recorded_at, None if persistent is None else persistent.value,
                       None if live is None else live.value))
    return Timeline(domain=name, property=prop, points=tuple(points),
                    requests=tuple(await ledger.history(name, prop)))


def _label(prop: str, value: Value | None) -> str:
    return _units.format_value(lookup(prop), value)


def render(line: Timeline, path: str) -> None:
    """Draw `line` into `path`, an SVG or PNG file as its extension says.

    Raises:
        InvalidRequestError: another extension, matplotlib is not installed, or `path` cannot be written.
    """
    kind = os.path.splitext(path)[1].lower().lstrip(".")
    if kind not in FORMATS:
        raise InvalidRequestError(f"plot writes .svg or .png files, not {path!r}")
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.dates import ConciseDateFormatter
    except ImportError as e:
        raise InvalidRequestError(f"vmledger plot needs matplotlib ({e}): pip install 'vmledger[plot]'") from e
    prop = line.property
    numeric = lookup(prop).type in ("bytes", "count")
    # Sizes are drawn in GiB (MiB when all are smaller), so that the axis reads in round numbers.
    sizes = [v for _, *vs in line.points for v in vs if isinstance(v, int)] + [
        r.requested for r in line.requests if isinstance(r.requested, int)]
    unit, scale = ("", 1) if lookup(prop).type != "bytes" else (
        ("GiB", 2**30) if max(sizes, default=0) >= 2**30 else ("MiB", 2**20))
    # Text values (media paths, states) get a row each, in order of appearance.
    rows: dict[Value, int] = {}

    def y(value: Value | None) -> float:
        if value is None:
            return math.nan
        return value / scale if numeric else rows.setdefault(value, len(rows))  # type: ignore[operator]

    # Text stays text in the SVG, and ids do not change from run to run.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vmledger"}):
        fig = Figure(figsize=(11, 4.5), layout="constrained")
        ax = fig.add_subplot()
        times = [t for t, _, _ in line.points]
        for index, name, style in ((1, "persistent", "-"), (2, "live", "--")):
            ax.step(times, [y(p[index]) for p in line.points], where="post", linestyle=style, label=name, gid=name)
        for n, r in enumerate(line.requests):
            asked = ax.plot([r.requested_at], [y(r.requested)], marker="o", markersize=10, fillstyle="none",
                            color="tab:blue", linestyle="none", label="requested" if n == 0 else None)[0]
            asked.set_gid(f"requested {r.request_id}")
            for scope, outcome in r.outcomes.items():
                marker, colour = STATUS_MARKERS.get(outcome.status, ("*", "tab:purple"))
                at = r.completed_at or r.requested_at
                value = r.requested if outcome.value is None else outcome.value
                mark = ax.plot([at], [y(value)], marker=marker, color=colour, linestyle="none")[0]
                mark.set_gid(f"outcome {r.request_id} {scope} {outcome.status}")
            if len(line.requests) <= _LABELLED:
                said = ", ".join(f"{s} {o.status}" + ("" if o.value in (None, r.requested) else
                                                       f" {_label(prop, o.value)}") for s, o in r.outcomes.items())
                ax.annotate(f"{_label(prop, r.requested)}: {said}", (r.requested_at, y(r.requested)),
                            xytext=(6, 6), textcoords="offset points", fontsize=7)
        for status, (marker, colour) in STATUS_MARKERS.items():
            ax.plot([], [], marker=marker, color=colour, linestyle="none", label=status)
        if numeric:
            ax.set_ylabel(unit or lookup(prop).unit)
        else:
            ax.set_yticks(range(len(rows)), [_label(prop, v) or "(empty)" for v in rows])
        ax.set_title(f"{line.domain} {prop}: requested, persistent and live")
        ax.set_xlabel("time (UTC)")
        ax.xaxis.set_major_formatter(ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        ax.grid(True, alpha=0.3)
        # No creation date in the file: the same ledger draws the same file.
        try:
            fig.savefig(path, format=kind, metadata={"Date": None} if kind == "svg" else {"Software": "vmledger"})
        except OSError as e:
            raise InvalidRequestError(f"cannot write {path}: {e.strerror or e}") from e
