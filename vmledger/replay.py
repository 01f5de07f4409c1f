"""Custom projections for replay tools: a class of your own, fed every event of the log in order.

A projection is any object with `apply(event)`, which receives each
`RecordedEvent` (its `event` upcast to the current version of its class).
`Ledger.replay(projection, ...)` feeds it the log, or a filtered part of it,
once; `Ledger.follow(projection, ...)` feeds it the log and then every new
event until cancelled.  A projection that has a `state` attribute (any
value JSON can hold) can be saved and resumed: given `checkpoint=PATH`, both
save `{"position": ..., "state": ...}` there and, when the file exists
already, set `state` from it and go on after its position.
See docs/replay.md for an example.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Iterable, Protocol

from vmledger.eventstore.errors import InvalidRequestError
from vmledger.eventstore.log import RecordedEvent

__all__ = ["Projection", "Replaying", "load_checkpoint", "feed", "run"]

#: Events fed between two saves of a checkpoint while following.
SAVE_EVERY = 1000


class Projection(Protocol):
    """What `Ledger.replay` and `Ledger.follow` feed: `apply` is called once per event, in log order."""

    def apply(self, event: RecordedEvent) -> None:
        """Take one recorded event into the projection's state."""
        ...


def load_checkpoint(path: str | os.PathLike[str], projection: Any) -> int | None:
    """Set `projection.state` from the checkpoint at `path` and return its position; None if there is no file yet.

    Raises:
        InvalidRequestError: the projection has no `state`, or the file is not a checkpoint.
    """
    if not hasattr(projection, "state"):
        raise InvalidRequestError("a projection saved in a checkpoint needs a `state` attribute")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InvalidRequestError(f"cannot read the checkpoint {os.fspath(path)!r}: {e}") from e
    position = saved.get("position") if isinstance(saved, dict) else None
    if isinstance(position, bool) or not isinstance(position, int) or position < 0 or "state" not in saved:
        raise InvalidRequestError(f"{os.fspath(path)!r} is not a projection checkpoint (position and state)")
    projection.state = saved["state"]
    return position


def _save(path: str | os.PathLike[str], position: int, state: str) -> None:
    """Write the checkpoint whole or not at all: a crash leaves the previous one."""
    part = f"{os.fspath(path)}.part"
    with open(part, "w", encoding="utf-8") as f:
        f.write(f'{{"position": {position}, "state": {state}}}\n')
    os.replace(part, path)


async def _checkpoint(path: str | os.PathLike[str], position: int, projection: Any) -> None:
    try:
        state = json.dumps(projection.state, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"the projection's state must be what JSON can hold: {e}") from e
    await asyncio.to_thread(_save, path, position, state)


async def feed(projection: Projection, events: AsyncIterator[RecordedEvent], *, start: int,
               checkpoint: str | os.PathLike[str] | None = None, save_every: int = SAVE_EVERY) -> int:
    """Feed `projection` each of `events`; return the position of the last one fed (`start` if none).

    With `checkpoint`, the state is saved with that position every
    `save_every` events, at the end, and when the feeding is cancelled; not
    when `apply` raises, since the state may then be half-changed.
    """
    position = start
    fed = 0
    try:
        async for rec in events:
            projection.apply(rec)
            position = rec.position
            fed += 1
            if checkpoint is not None and fed % save_every == 0:
                await _checkpoint(checkpoint, position, projection)
    except asyncio.CancelledError:
        if checkpoint is not None and fed:
            await _checkpoint(checkpoint, position, projection)
        raise
    if checkpoint is not None:
        await _checkpoint(checkpoint, position, projection)
    return position


async def run(projection: Projection, events_after: Callable[[int], AsyncIterator[RecordedEvent]], *,
              from_position: int, checkpoint: str | os.PathLike[str] | None) -> int:
    """Feed `projection` the events `events_after(start)` yields, starting after the checkpoint's position if it exists.

    The one body of `Ledger.replay` and `follow`, and of their remote twins.

    Raises:
        InvalidRequestError: a bad checkpoint, or a state JSON cannot hold.
    """
    saved = None if checkpoint is None else load_checkpoint(checkpoint, projection)
    start = from_position if saved is None else saved
    return await feed(projection, events_after(start), start=start, checkpoint=checkpoint)


class Replaying:
    """`replay` and `follow`, written once over the `events` and `subscribe` of `Ledger` and `RemoteLedger`."""

    events: Callable[..., AsyncIterator[RecordedEvent]]
    subscribe: Callable[..., AsyncIterator[RecordedEvent]]

    async def replay(self, projection: Projection, *, from_position: int = 0, to_position: int | None = None,
                     domain: str | None = None, types: str | Iterable[str] | None = None,
                     since: datetime | None = None, until: datetime | None = None,
                     checkpoint: str | os.PathLike[str] | None = None) -> int:
        """Feed `projection.apply` every event after `from_position` up to `to_position`, filtered as `events`, in order.

        With `checkpoint`, a file that exists already sets `projection.state`
        and the position to start after (instead of `from_position`), and the
        state is saved there with the position of the last event fed.
        Returns that position (the start, when no event was fed).

        Raises:
            InvalidRequestError: as for `events`, or a bad checkpoint.
            UnknownDomainError: as for `events`.
        """
        return await run(projection, lambda start: self.events(
            from_position=start, to_position=to_position, domain=domain, types=types, since=since, until=until),
            from_position=from_position, checkpoint=checkpoint)

    async def follow(self, projection: Projection, *, from_position: int = 0, domain: str | None = None,
                     types: str | Iterable[str] | None = None, since: datetime | None = None,
                     checkpoint: str | os.PathLike[str] | None = None) -> None:
        """Feed `projection.apply` every event after `from_position`, then each new one, until cancelled.

        A checkpoint works as for `replay`; it is saved every 1,000 events
        and when the task is cancelled.

        Raises:
            InvalidRequestError: as for `subscribe`, or a bad checkpoint.
            UnknownDomainError: as for `subscribe`.
        """
        await run(projection, lambda start: self.subscribe(
            from_position=start, domain=domain, types=types, since=since),
            from_position=from_position, checkpoint=checkpoint)
