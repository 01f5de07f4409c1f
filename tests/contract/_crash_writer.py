"""A writer process for the crash tests: `set` requests as fast as it can, until it is killed.

Usage: `python _crash_writer.py URL TAG SEED`.  It prints `ready` once the
ledger is open, then `append` on stdout just before every append starts, so
that the test can kill it in the middle of a commit.  Three tasks send `set`
requests (request ids `TAG-TASK-N`) in every scope to domains `a` (running),
`b` (stopped) and `c`, which a fourth task stops and starts again and again.
With a `postgresql://` URL the simulated hypervisor's state is in the current
directory, as `vmledger.open` puts it.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

import vmledger

GiB = 2**30
SCOPES = ("persistent", "live", "both", "both", "current")
VALUES = {
    "memory": (GiB, 3 * GiB // 2, 2 * GiB, 3 * GiB),
    "vcpus": (1, 2, 3, 4),
    "media:hdc": ("", "/iso/a.iso", "/iso/b.iso"),
}


class Announced:
    """The ledger's own log, announcing each append on stdout before it starts."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        """Print `append`, then append."""
        print("append", flush=True)
        return await self._log.append(*args, **kwargs)


async def requests(ledger: vmledger.Ledger, tag: str, task: int, rng: random.Random) -> None:
    """Send `set` requests forever."""
    for n in range(10**9):
        prop = rng.choice(sorted(VALUES))
        await ledger.set(rng.choice("abc"), prop, rng.choice(VALUES[prop]), scope=rng.choice(SCOPES),
                         request_id=f"{tag}-{task}-{n}", principal=f"task{task}")


async def lifecycle(ledger: vmledger.Ledger, rng: random.Random) -> None:
    """Stop and start domain `c` forever."""
    while True:
        await asyncio.sleep(rng.uniform(0, 0.02))
        if (await ledger.show("c"))["power_state"] == "running":
            await ledger.stop("c")
        else:
            await ledger.start("c")


async def main(url: str, tag: str, seed: int) -> None:
    async with vmledger.open(url) as ledger:
        ledger.log = Announced(ledger.log)
        print("ready", flush=True)
        await asyncio.gather(lifecycle(ledger, random.Random(seed)),
                             *(requests(ledger, tag, t, random.Random(seed * 10 + t)) for t in range(3)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
