"""The coalescer in front of the batchable API: a lone row runs directly, concurrent rows batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from heimdall.coalesce import Coalescer


class Calls:
    """Records what reached the batch call and the direct call; `gate` holds batch calls open."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.alone = 0
        self.gate = asyncio.Event()
        self.fail = False

    async def batch(self, rows: list[np.ndarray]) -> np.ndarray:
        self.batches.append(len(rows))
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("model exploded")
        return np.stack(rows) * 2

    async def one(self, row: np.ndarray) -> np.ndarray:
        self.alone += 1
        await asyncio.sleep(0.01)
        return row * 2


def test_a_lone_row_skips_the_batcher_and_concurrent_rows_share_calls():
    async def scenario():
        calls = Calls()
        co = Coalescer(calls.batch, calls.one, max_in_flight=2, max_rows=8)
        assert (await co(np.full(5, 1.0)) == 2.0).all() and (calls.alone, calls.batches) == (1, [])
        lone = asyncio.ensure_future(co(np.full(5, 0.0)))
        await asyncio.sleep(0)  # the lone row is in flight: the next 20 queue behind it
        rows = [asyncio.ensure_future(co(np.full(5, float(i)))) for i in range(20)]
        await asyncio.sleep(0.001)
        calls.gate.set()
        answers = await asyncio.gather(lone, *rows)
        assert [a[0] for a in answers[1:]] == [2.0 * i for i in range(20)]  # each its own answer
        assert calls.alone == 2 and sum(calls.batches) == 20
        assert len(calls.batches) < 20 and max(calls.batches) <= 8  # batched, within max_rows

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs():
    async def scenario():
        calls = Calls()
        co = Coalescer(calls.batch, calls.one, max_in_flight=1)
        lone = asyncio.ensure_future(co(np.zeros(5)))
        await asyncio.sleep(0)
        doomed = [asyncio.ensure_future(co(np.ones(5))) for _ in range(3)]
        await asyncio.sleep(0)
        calls.fail = True
        calls.gate.set()
        await lone
        for task in doomed:
            with pytest.raises(RuntimeError, match="exploded"):
                await task
        calls.fail = False
        lone = asyncio.ensure_future(co(np.zeros(5)))
        await asyncio.sleep(0)
        after = asyncio.ensure_future(co(np.ones(5)))
        assert (await after == 2.0).all() and (await lone == 0.0).all()

    asyncio.run(scenario())
