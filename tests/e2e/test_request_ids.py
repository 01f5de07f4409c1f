"""Generated request ids are UUIDs version 7, which sort by the time they were made (issue #19)."""

from __future__ import annotations

import asyncio
import os
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

import vmledger
from vmledger._compose import uuid7

GiB = 2**30


def test_generated_request_ids_are_version_7_uuids_in_the_order_of_their_requests(tmp_path: str) -> None:
    """Each `set` gets a version-7 UUID, and a later request's id sorts after an earlier one's."""
    async def go() -> list[str]:
        async with vmledger.open(os.path.join(tmp_path, "l.db")) as ledger:
            await ledger.define("web", guest_type="pv", memory=GiB, max_memory=4 * GiB, vcpus=1, max_vcpus=4)
            ids = []
            for size in (2 * GiB, 3 * GiB, 2 * GiB):
                ids.append((await ledger.set("web", "memory", size, scope="persistent")).request_id)
                await asyncio.sleep(0.002)  # ids of one millisecond share their time and differ at random
            return ids

    ids = asyncio.run(go())
    assert [(uuid.UUID(i).version, uuid.UUID(i).hex == i) for i in ids] == [(7, True)] * 3
    assert sorted(ids) == ids and len(set(ids)) == 3


@settings(database=None, deadline=None)
@given(ms=st.integers(0, 2**48 - 1), later=st.integers(1, 2**20), rand=st.integers(0, 2**80 - 1),
       other=st.integers(0, 2**80 - 1))
def test_uuid7_keeps_its_millisecond_and_random_bits_and_sorts_by_time(ms: int, later: int, rand: int,
                                                                       other: int) -> None:
    """`uuid7` is an RFC 9562 version-7 UUID whose fields give back its millisecond and random bits."""
    made = uuid.UUID(uuid7(ms, rand))
    assert (made.version, made.variant, made.hex) == (7, uuid.RFC_4122, uuid7(ms, rand))
    assert made.int >> 80 == ms
    assert (made.int >> 64 & 0xFFF, made.int & (2**62 - 1)) == (rand >> 68, rand & (2**62 - 1))
    if ms + later < 2**48:
        assert uuid7(ms, rand) < uuid7(ms + later, other)
