"""How a request's capture set (a row) reaches the model: BentoML's adaptive batcher, in-process.

**The batcher, without the HTTP round trip.** BentoML 1.4 sends a service's call to its
own batchable API (`self.to_async.infer`) through an HTTP client over the worker's
ASGI app: the rows are serialized to JSON and back, and each call passes every
middleware and the router. That cost more CPU than batching saved: the service ran
10-37% slower batched than calling the model per request. The batcher itself, a
`CorkDispatcher` per batchable API with its `max_batch_size`, its `max_latency_ms`
budget (503 beyond it) and the `adaptive_batch_size` histogram, sits behind
`ServiceAppFactory.batch_infer`, which the API's HTTP route calls with the parsed
arguments. `batch_caller` calls it the same way. BentoML internals, checked on the
pinned 1.4.40: if they move, the first call fails saying so, and so do the tests
that batch through a real `bentoml serve`. The rows are decoded capture sets, passed as
they are: nothing is serialized, and the API computes a whole batch's features and runs
the model on them in one worker-thread hop.

**A lone row skips it** (`LoneRowBypass`). The batcher holds a call for the average
wait it learned from recent batches; after a burst of overload it kept that wait
(80 ms, against 8 ms idle) through minutes of quiet traffic. A row that arrives with
nothing else in flight has nothing to wait for, so it runs at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import numpy as np

RowCall = Callable[[Any], Awaitable[np.ndarray]]


def batch_caller(service: object, api: str, argument: str) -> Callable[[Any], Awaitable[Any]]:
    """`await call(value)`: `api(argument=value)` through its adaptive batcher in this worker.

    `service` is the running service instance. Call this from a request, not from
    `__init__`: BentoML attaches the worker's app after the instance is built.
    """
    try:
        app = service.__self_proxy__._async.app  # type: ignore[attr-defined]
        route = next(r for r in app.routes if getattr(r, "name", None) == api)
        factory = route.endpoint.func.__self__  # functools.partial(factory.api_endpoint_wrapper, api)
        batch_infer = factory.batch_infer
    except (AttributeError, StopIteration) as exc:
        raise RuntimeError(
            f"BentoML {bentoml.__version__} does not expose the batcher of {api!r} where "
            "heimdall/batching.py expects it (written for 1.4.40)"
        ) from exc
    return lambda value: batch_infer(api, (), {argument: value})


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
