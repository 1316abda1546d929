"""How rows reach the model: a lone row runs directly, rows that overlap go through the batcher.

`batch_caller` (BentoML's batcher in-process) is exercised by the service tests, through
the in-process ASGI app and a real `bentoml serve` (where the batch-size histogram must
show batches larger than one).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from heimdall.serving.batching import LoneRowBypass


class Model:
    """Records which path each row took; `gate` holds batched rows until set."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, float]] = []
        self.gate = asyncio.Event()

    async def batched(self, row: np.ndarray) -> np.ndarray:
        self.paths.append(("batched", float(row[0])))
        await self.gate.wait()
        if row[0] < 0:
            raise RuntimeError("model exploded")
        return row * 2

    async def alone(self, row: np.ndarray) -> np.ndarray:
        self.paths.append(("alone", float(row[0])))
        await asyncio.sleep(0.01)
        return row * 2


def test_a_lone_row_runs_directly_and_overlapping_rows_are_batched():
    async def scenario():
        model = Model()
        route = LoneRowBypass(model.batched, model.alone)
        assert (await route(np.full(3, 1.0)) == 2.0).all()
        first = asyncio.ensure_future(route(np.full(3, 0.0)))
        await asyncio.sleep(0)  # the first row is in flight: the next ones overlap it
        overlapping = [asyncio.ensure_future(route(np.full(3, float(i)))) for i in range(2, 6)]
        await asyncio.sleep(0)
        model.gate.set()
        answers = await asyncio.gather(first, *overlapping)
        assert [a[0] for a in answers] == [0.0, 4.0, 6.0, 8.0, 10.0]  # each its own answer
        assert model.paths == [("alone", 1.0), ("alone", 0.0)] + [("batched", float(i)) for i in range(2, 6)]
        assert (await route(np.full(3, 7.0)) == 14.0).all() and model.paths[-1] == ("alone", 7.0)

    asyncio.run(scenario())


def test_a_failed_row_fails_only_its_caller_and_is_no_longer_counted():
    async def scenario():
        model = Model()
        route = LoneRowBypass(model.batched, model.alone)
        first = asyncio.ensure_future(route(np.zeros(3)))
        await asyncio.sleep(0)
        doomed = asyncio.ensure_future(route(np.full(3, -1.0)))
        fine = asyncio.ensure_future(route(np.ones(3)))
        await asyncio.sleep(0)
        model.gate.set()
        with pytest.raises(RuntimeError, match="exploded"):
            await doomed
        assert (await fine == 2.0).all() and (await first == 0.0).all()
        await route(np.full(3, 3.0))
        assert model.paths[-1] == ("alone", 3.0)  # nothing left in flight after the failure

    asyncio.run(scenario())
