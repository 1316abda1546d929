"""Heimdall Serve: transmitter positions from WebSDR capture sets (BentoML 1.4)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import numpy as np
from bentoml import get_current_service  # once: each `bentoml.<name>` goes through its lazy __getattr__
from pydantic import Field
from threadpoolctl import threadpool_limits

from heimdall.serving.admin import admin_routes
from heimdall.serving.admission import Admission, Limits
from heimdall.serving.batching import LoneRowBypass
from heimdall.serving.bentoml_internals import batch_caller, bound_headers, serve_behind
from heimdall.serving.direct import DirectRoutes
from heimdall.serving.follower import Follower
from heimdall.serving.header_limit import HeaderLimitedProtocol
from heimdall.serving.metrics import Metrics
from heimdall.serving.pipeline import Infer, Pipeline
from heimdall.serving.routes import ops_app
from heimdall.serving.schemas import (
    BatchPrediction,
    Capture,
    CaptureSetIn,
    ConfidenceLevel,
    Encoding,
    Prediction,
)
from heimdall.serving.settings import load_settings
from heimdall.serving.shutdown import stop_listening_on_sigterm
from heimdall.serving.versions import Roster, Row, locate_rows, open_model

settings = load_settings()
TIMEOUT_S = 30  # the longest a request may take; also how long a retired model version stays open


def _current() -> Heimdall:
    return get_current_service()


class InferRequest(bentoml.IODescriptor):
    """`POST /infer` as BentoML declares it (the front door serves it: `heimdall.serving.direct`)."""

    items: list[CaptureSetIn] = Field(min_length=1, max_length=settings.max_batch_size)


@bentoml.service(
    name="heimdall",
    workers=settings.workers,
    traffic={"timeout": TIMEOUT_S},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    logging={"access": {"enabled": settings.access_log}},
)
@bentoml.asgi_app(
    ops_app(lambda: _current().pipeline, admin_routes(lambda: _current().follower, settings.admin_token)),
    path="/v1",
)
class Heimdall:
    model = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        # Raises unless the Bento's model loads and its warm-up inference is valid, so the
        # worker (and BentoML's /readyz) only comes up with a working model.
        # One worker per core, one compute thread per worker: left alone, numpy's BLAS starts a
        # thread per core in every worker, and under load the mel matmul then cost 3x the CPU.
        threadpool_limits(1)
        self.metrics = Metrics()
        default = open_model(self.model, settings, self.metrics)
        # the batcher can only be reached once the worker's app is up
        self._batched_infer: Callable[[Any], Awaitable[Any]] | None = None
        infer: Infer
        if settings.adaptive_batching:
            infer = LoneRowBypass(self._infer_batched, self._infer_direct)
        else:
            infer = self._infer_direct
        self.pipeline = Pipeline(Roster(default), settings, self.metrics, infer)
        # With HEIMDALL_MODEL_URI the registry's version replaces the Bento's before the first
        # request; a registry that is down or a version that fails a check leaves the Bento's.
        self.follower = Follower(
            settings, self.metrics, self.pipeline, lambda m: open_model(m, settings, self.metrics), TIMEOUT_S
        )
        if self.follower.following:
            self.follower.check_blocking()
        # With CPython's default thresholds a request triggers collections that re-scan the
        # worker's ~250k long-lived objects (and a JSON body the fast reader does not take
        # becomes ~30k lists per receiver, hundreds of collections). Freeze what exists now
        # (it lives as long as the worker) and collect rarely.
        gc.freeze()
        gc.set_threshold(100_000, 20, 100)
        stop_listening_on_sigterm()

    @bentoml.on_startup
    async def _follow_the_registry(self) -> None:
        if self.follower.following:
            self._follower_task = asyncio.create_task(self.follower.run())

    async def infer_rows(self, rows: list[Row]) -> list[list[float]]:
        """Decoded capture sets, each with its version, through the adaptive batcher of `infer`."""
        if self._batched_infer is None:
            self._batched_infer = batch_caller(self, "infer")
        return await self._batched_infer(rows)

    async def _infer_batched(self, row: Row) -> np.ndarray:
        return np.asarray((await self.infer_rows([row]))[0])

    async def _infer_direct(self, row: Row) -> np.ndarray:
        model, iq = row
        return (await asyncio.to_thread(model.locate, [iq]))[0]

    # The front door answers these routes (`heimdall.serving.direct`); the declarations give
    # the OpenAPI document and BentoML's Python client their shape.
    @bentoml.api(route="/predict")
    async def predict(
        self,
        captures: list[Capture],
        encoding: Encoding = "int16",
        confidence_level: ConfidenceLevel = 0.95,
        use_cache: bool = True,
    ) -> Prediction:
        """Locate the transmitter heard in one capture set."""
        return await self.pipeline.predict(captures, encoding, confidence_level, use_cache)

    @bentoml.api(route="/predict/batch")
    async def predict_batch(
        self, items: list[CaptureSetIn], confidence_level: ConfidenceLevel = 0.95, use_cache: bool = True
    ) -> BatchPrediction:
        """Locate 1-100 capture sets; a bad item gets its own error without failing the others."""
        return await self.pipeline.predict_batch(items, confidence_level, use_cache)

    @bentoml.api(
        batchable=True,
        max_batch_size=settings.max_batch_size,
        max_latency_ms=settings.max_latency_ms,
        input_spec=InferRequest,
    )
    def infer(self, items: list[Row]) -> list[list[float]]:
        """The model's raw outputs [east m, north m, sigma east m, sigma north m, correlation]
        for each capture set, adaptive-batched. Items arrive decoded: this worker's requests
        hand their capture sets to the batcher in-process (`heimdall.serving.batching`), and
        the front door decodes those posted here before they join a batch (for the primary).
        Each row names the version that answers it."""
        return locate_rows(items).tolist()


def _rejected(reason: str) -> None:
    _current().pipeline.rejected(reason)


def _front_door(app: Any) -> Admission:
    routes = DirectRoutes(lambda: _current().pipeline, lambda rows: _current().infer_rows(rows), _rejected)
    return Admission(
        app,
        limits,
        on_reject=_rejected,
        routes=routes.routes,
        get_routes=routes.get_routes,
        in_progress=lambda path: _current().metrics.requests_in_progress.labels(path),
    )


limits = Limits(
    max_bytes=settings.max_body_bytes,
    max_in_flight=settings.max_in_flight,
    grace_s=settings.body_grace_s,
    min_rate=settings.body_min_rate,
)
serve_behind(Heimdall, _front_door)
bound_headers(HeaderLimitedProtocol, settings.max_header_bytes, on_reject=_rejected)
