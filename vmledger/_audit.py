"""Audit and replay tools made of projection rows and folds: the audit report, config diffs, revert plans.

Pure functions: the `Ledger` reads the rows and the events, and calls these
to shape its answers (`Ledger.audit`, `.diff`, `.revert`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from vmledger.eventstore.catalogue import Kind, Outcome, Scope, lookup
from vmledger.eventstore.log import RecordedEvent
from vmledger.eventstore.state import DomainFold, DomainState
from vmledger.results import (
    AuditReport, ConfigChange, DomainDrift, DriftEpisode, OutcomeCount, ReasonCount, RevertStep, Unrevertible,
)

__all__ = ["audit_report", "config_changes", "revert_plan", "STATUSES"]

#: The outcome statuses an audit counts, in its columns' order.
STATUSES = tuple(o.status for o in (Outcome.APPLIED, Outcome.PARTIALLY_APPLIED, Outcome.REFUSED, Outcome.FAILED,
                                    Outcome.REQUESTED))
_REFUSED_OR_FAILED = (Outcome.REFUSED.status, Outcome.FAILED.status)
#: The bounds other properties are checked against: raised before the others, lowered after them.
_BOUNDS = ("max_memory", "max_vcpus")


def audit_report(counts: Iterable[Sequence[Any]], episodes: Iterable[Sequence[Any]], *, since: datetime | None,
                 until: datetime, domain: str | None, principal: str | None,
                 now: datetime | None = None) -> AuditReport:
    """Return the audit report of outcome counts (`queries.outcome_counts`) and episode rows (`queries.episode_rows`).

    Each episode's duration, and each domain's time in drift (the union of
    its episodes), is counted within `[since, until]`; an episode still
    open, up to `now` at most (a period that ends in the future has not
    drifted yet past now).
    """
    requests: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    reasons: dict[tuple[str, str | None], int] = defaultdict(int)
    for who, prop, scope, status, reason, count in counts:
        requests[who, prop, scope][status] += count
        if status in _REFUSED_OR_FAILED:
            reasons[status, reason] += count
    # A month of a large fleet lists tens of thousands of episodes: this loop is written for speed.
    found = []
    add = found.append
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    parse, episode, zero = datetime.fromisoformat, DriftEpisode, timedelta(0)
    for name, prop, since_position, cause, request_id, started_text, ended_position, ended_text in episodes:
        started = parse(started_text)
        lo = since if since is not None and since > started else started
        if ended_text is None:
            ended, hi = None, until if now is None or now > until else now
        else:
            ended = parse(ended_text)
            hi = until if ended > until else ended
        span = hi - lo
        add(episode(domain=name, property=prop, cause=cause, request_id=request_id, since_position=since_position,
                    started=started, ended_position=ended_position, ended=ended,
                    duration=span.total_seconds() if span > zero else 0.0))
        held = spans.get(name)
        if held is None:
            spans[name] = [(lo, hi)]
        else:
            held.append((lo, hi))
    return AuditReport(
        since=since, until=until, domain=domain, principal=principal,
        requests=tuple(OutcomeCount(principal=who, property=prop, scope=scope, requests=sum(c.values()),
                                    applied=c["applied"], partial=c["partial"], refused=c["refused"],
                                    failed=c["failed"], in_flight=c["in_flight"])
                       for (who, prop, scope), c in sorted(requests.items())),
        reasons=tuple(ReasonCount(status=status, reason=reason, count=n) for (status, reason), n in sorted(
            reasons.items(), key=lambda item: (-item[1], item[0][0], item[0][1] or ""))),
        episodes=tuple(found),
        drift=tuple(DomainDrift(domain=name, episodes=len(s), seconds=_covered(s)) for name, s in sorted(spans.items())),
    )


def _covered(spans: list[tuple[datetime, datetime]]) -> float:
    """Return the seconds the union of `spans` covers (summed as `timedelta`s: exact to the microsecond)."""
    total, reach = timedelta(0), None
    for lo, hi in sorted(spans):
        if reach is not None and lo < reach:
            lo = reach
        if hi > lo:
            total += hi - lo
            reach = hi
    return total.total_seconds()


def config_changes(records: Iterable[RecordedEvent], after: int) -> list[ConfigChange]:
    """Return every value of a domain's configs that its stream's events after position `after` moved, in order.

    `records` is the stream up to the diff's end; the fold (`DomainFold`)
    says what each event does to the configs.
    """
    changes: list[ConfigChange] = []
    working: DomainFold | None = None
    for rec in records:
        if rec.position <= after:
            working = DomainFold.folded(working, rec)
            continue
        before = _values(working)
        working = DomainFold.folded(working, rec)
        now = _values(working)
        request_id = getattr(rec.event, "request_id", None)
        for scope in (Scope.PERSISTENT.value, Scope.LIVE.value):
            was, has = before[scope], now[scope]
            for prop in sorted(set(was) | set(has)):
                if was.get(prop, _NONE) != has.get(prop, _NONE):
                    changes.append(ConfigChange(
                        scope=scope, property=prop, before=was.get(prop), after=has.get(prop),
                        position=rec.position, event=rec.type, request_id=request_id, at=rec.recorded_at))
    return changes


_NONE = object()


def _values(fold: DomainFold | None) -> dict[str, dict[str, Any]]:
    """Return the values of a fold's persistent and live configs (the live one only while it runs; none once undefined)."""
    if fold is None or not fold.defined:
        return {Scope.PERSISTENT.value: {}, Scope.LIVE.value: {}}
    return {Scope.PERSISTENT.value: {k: s.value for k, s in fold.persistent.items()},
            Scope.LIVE.value: {k: s.value for k, s in fold.live.items()} if fold.running else {}}


def revert_plan(then: DomainState, now: DomainState, scope: str) -> tuple[list[RevertStep], list[Unrevertible]]:
    """Return the requests that bring `now`'s configs back to `then`'s, and the values that cannot go back.

    `scope` `persistent` reverts the persistent config; `both` also brings
    a running domain's live values back to those it ran with then (its
    persistent ones, if it did not run), in one request where both targets
    agree.  A value fixed while the domain runs cannot go back live, and a
    device that no longer exists, or did not then, cannot go back at all.
    Bounds (`max_memory`, `max_vcpus`) are raised first and lowered last, so
    that every request stays within them.
    """
    steps: list[RevertStep] = []
    lost: list[Unrevertible] = []
    persistent, live = Scope.PERSISTENT.value, Scope.LIVE.value
    for prop in sorted(set(then.persistent) | set(now.persistent)):
        was, has = then.persistent.get(prop), now.persistent.get(prop)
        if has is None or was is None:
            lost.append(Unrevertible(
                property=prop, scope=persistent, value=None if was is None else was.value,
                current=None if has is None else has.value,
                why="the device no longer exists" if has is None else "the device did not exist then"))
            continue
        want_persistent = has.value != was.value
        target_live, want_live = was.value, False
        if scope == Scope.BOTH.value and now.running and prop in now.live:
            if then.running and prop in then.live:
                target_live = then.live[prop].value
            want_live = now.live[prop].value != target_live
            if want_live and lookup(prop).kind is Kind.RO_INS:
                lost.append(Unrevertible(property=prop, scope=live, value=target_live, current=now.live[prop].value,
                                         why="fixed while the domain runs: it changes at the next boot"))
                want_live = False
        if want_persistent and want_live and target_live == was.value:
            steps.append(RevertStep(property=prop, scope=Scope.BOTH.value, value=was.value, current=has.value))
            continue
        if want_persistent:
            steps.append(RevertStep(property=prop, scope=persistent, value=was.value, current=has.value))
        if want_live:
            steps.append(RevertStep(property=prop, scope=live, value=target_live, current=now.live[prop].value))

    def order(step: RevertStep) -> int:
        if step.property not in _BOUNDS:
            return 1
        return 0 if step.current is None or step.value >= step.current else 2

    return sorted(steps, key=order), lost
