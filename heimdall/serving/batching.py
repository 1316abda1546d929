"""How a request's capture set (a row) reaches the model: BentoML's adaptive batcher, in-process.

**The batcher, without the HTTP round trip.** BentoML 1.4 sends a service's call to its
own batchable API (`self.to_async.infer`) through an HTTP client over the worker's
ASGI app: the rows are serialized to JSON and back, and each call passes every
middleware and the router, which costs more CPU than batching saves. The batcher
itself (a `CorkDispatcher` per batchable API with its `max_batch_size`, its
`max_latency_ms` budget, 503 beyond it, and the `adaptive_batch_size` histogram) sits
behind the function the API's HTTP route calls with the parsed arguments;
`heimdall.serving.bentoml_internals.batch_caller` hands it rows directly. The rows are
decoded capture sets, passed as they are: nothing is serialized, and the API computes a
whole batch's features and runs the model on them in one worker-thread hop.

**A lone row skips it** (`LoneRowBypass`). The batcher holds a call for the average
wait it learned from recent batches, and keeps a wait learned under overload through
quiet traffic that follows. A row that arrives with nothing else in flight has nothing
to wait for, so it runs at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

RowCall = Callable[[Any], Awaitable[np.ndarray]]


class LoneRowBypass:
    """`await route(row)`: through `batched` while other rows are in flight, else through `alone`."""

    def __init__(self, batched: RowCall, alone: RowCall) -> None:
        self._batched, self._alone = batched, alone
        self._in_flight = 0

    async def __call__(self, row: Any) -> np.ndarray:
        call = self._batched if self._in_flight else self._alone
        self._in_flight += 1
        try:
            return await call(row)
        finally:
            self._in_flight -= 1
