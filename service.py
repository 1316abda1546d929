"""Heimdall Serve: transmitter positions from WebSDR capture sets (BentoML 1.4)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import bentoml
import numpy as np
from pydantic import Field
from threadpoolctl import threadpool_limits

from heimdall.contract.features import FeatureExtractor
from heimdall.contract.servable import load_servable
from heimdall.serving.admission import Admission, Limits
from heimdall.serving.batching import LoneRowBypass
from heimdall.serving.bentoml_internals import batch_caller, bound_headers, serve_behind
from heimdall.serving.direct import DirectRoutes
from heimdall.serving.header_limit import HeaderLimitedProtocol
from heimdall.serving.inference import OnnxModel
from heimdall.serving.metrics import Metrics
from heimdall.serving.pipeline import Infer, Pipeline, ServedModel
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

settings = load_settings()


def _current() -> Heimdall:
    return bentoml.get_current_service()


class InferRequest(bentoml.IODescriptor):
    """`POST /infer` as BentoML declares it (the front door serves it: `heimdall.serving.direct`)."""

    items: list[CaptureSetIn] = Field(min_length=1, max_length=settings.max_batch_size)


@bentoml.service(
    name="heimdall",
    workers=settings.workers,
    traffic={"timeout": 30},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    logging={"access": {"enabled": settings.access_log}},
)
@bentoml.asgi_app(ops_app(lambda: _current().pipeline), path="/v1")
class Heimdall:
    model = bentoml.models.BentoModel(settings.model_tag)

    def __init__(self) -> None:
        # Raises unless the model loads and its warm-up inference is valid, so the
        # worker (and BentoML's /readyz) only comes up with a working model.
        start = time.perf_counter()
        # One worker per core, one compute thread per worker: left alone, numpy's BLAS starts a
        # thread per core in every worker, and under load the mel matmul then cost 3x the CPU.
        threadpool_limits(1)
        self.metrics = Metrics()
        contract = load_servable(
            self.model.path_of("model.onnx"), self.model.path_of("contract.json"), str(self.model.tag)
        )
        self.onnx = OnnxModel(self.model.path_of("model.onnx"), contract, threads=settings.onnx_threads)
        self.onnx.warm_up()
        self.features = FeatureExtractor(contract)
        self.features.warm_up()
        served = ServedModel(
            name=self.model.tag.name,
            version=self.model.tag.version,
            contract=contract,
            labels=dict(self.model.info.labels),
            load_seconds=time.perf_counter() - start,
        )
        # the batcher can only be reached once the worker's app is up
        self._batched_infer: Callable[[Any], Awaitable[Any]] | None = None
        infer: Infer
        if settings.adaptive_batching:
            infer = LoneRowBypass(self._infer_batched, self._infer_direct)
        else:
            infer = self._infer_direct
        self.pipeline = Pipeline(served, settings, self.metrics, infer)
        # With CPython's default thresholds a request triggers collections that re-scan the
        # worker's ~250k long-lived objects (and a JSON body the fast reader does not take
        # becomes ~30k lists per receiver, hundreds of collections). Freeze what exists now
        # (it lives as long as the worker) and collect rarely.
        gc.freeze()
        gc.set_threshold(100_000, 20, 100)
        stop_listening_on_sigterm()

    async def infer_rows(self, rows: list[Mapping[str, np.ndarray]]) -> list[list[float]]:
        """Decoded capture sets through the adaptive batcher of `infer`."""
        if self._batched_infer is None:
            self._batched_infer = batch_caller(self, "infer", "items")
        return await self._batched_infer(rows)

    async def _infer_batched(self, iq: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray((await self.infer_rows([iq]))[0])

    async def _infer_direct(self, iq: Mapping[str, np.ndarray]) -> np.ndarray:
        return (await asyncio.to_thread(self._locate, [iq]))[0]

    def _locate(self, items: list[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Capture sets -> (n, 5) model outputs: features and one ONNX run, in a worker thread."""
        start = time.perf_counter()
        features = self.features.capture_sets(items)
        ready = time.perf_counter()
        out = self.onnx.run(features)
        self.metrics.preprocess_seconds.observe(ready - start)
        self.metrics.inference_seconds.observe(time.perf_counter() - ready)
        return out

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
    def infer(self, items: list[Mapping[str, np.ndarray]]) -> list[list[float]]:
        """The model's raw outputs [east m, north m, sigma east m, sigma north m, correlation]
        for each capture set, adaptive-batched. Items arrive decoded: this worker's requests
        hand their capture sets to the batcher in-process (`heimdall.serving.batching`), and
        the front door decodes those posted here before they join a batch."""
        return self._locate(items).tolist()


def _rejected(reason: str) -> None:
    _current().pipeline.rejected(reason)


def _front_door(app: Any) -> Admission:
    routes = DirectRoutes(lambda: _current().pipeline, lambda rows: _current().infer_rows(rows), _rejected)
    return Admission(app, limits, on_reject=_rejected, routes=routes.routes, get_routes=routes.get_routes)


limits = Limits(
    max_bytes=settings.max_body_bytes,
    max_in_flight=settings.max_in_flight,
    grace_s=settings.body_grace_s,
    min_rate=settings.body_min_rate,
)
serve_behind(Heimdall, _front_door)
bound_headers(HeaderLimitedProtocol, settings.max_header_bytes, on_reject=_rejected)
