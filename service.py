"""Heimdall Serve: transmitter positions from WebSDR capture sets (BentoML 1.4)."""

from __future__ import annotations

import asyncio
import gc
import time

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from heimdall import json_body
from heimdall.admission import Admission
from heimdall.batching import LoneRowBypass, batch_caller
from heimdall.http import ops_app, refusals_as_400
from heimdall.inference import OnnxLocalizer, pack_features, unpack_features
from heimdall.localizer import Localizer, ServedModel
from heimdall.metrics import Metrics
from heimdall.schemas import BatchPrediction, Capture, CaptureSetIn, ConfidenceLevel, Encoding, Prediction
from heimdall.servable import load_servable
from heimdall.settings import load_settings
from heimdall.shutdown import stop_listening_on_sigterm

settings = load_settings()


def _current() -> Heimdall:
    return bentoml.get_current_service()


@bentoml.service(
    name="heimdall",
    workers=settings.workers,
    traffic={"timeout": 30},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    logging={"access": {"enabled": settings.access_log}},
)
@bentoml.asgi_app(ops_app(lambda: _current().localizer), path="/v1")
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
        self.onnx = OnnxLocalizer(self.model.path_of("model.onnx"), contract, threads=settings.onnx_threads)
        self.onnx.warm_up()
        served = ServedModel(
            name=self.model.tag.name,
            version=self.model.tag.version,
            contract=contract,
            labels=dict(self.model.info.labels),
            load_seconds=time.perf_counter() - start,
        )
        self._batched_infer = None  # the batcher can only be reached once the worker's app is up
        if settings.adaptive_batching:
            infer = LoneRowBypass(self._infer_batched, self._infer_direct)
        else:
            infer = self._infer_direct
        self.localizer = Localizer(served, settings, self.metrics, infer)
        self.localizer.extractor.warm_up()
        # With CPython's default thresholds a request triggers collections that re-scan the
        # worker's ~250k long-lived objects (and a JSON body the fast reader does not take
        # becomes ~30k lists per receiver, hundreds of collections). Freeze what exists now
        # (it lives as long as the worker) and collect rarely.
        gc.freeze()
        gc.set_threshold(100_000, 20, 100)
        stop_listening_on_sigterm()

    async def _infer_batched(self, features: np.ndarray) -> np.ndarray:
        if self._batched_infer is None:
            self._batched_infer = batch_caller(self, "infer", "features")
        return np.asarray((await self._batched_infer([pack_features(features)]))[0])

    async def _infer_direct(self, features: np.ndarray) -> np.ndarray:
        return (await asyncio.to_thread(self._run, features[None]))[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.onnx.run(batch)
        self.metrics.inference_seconds.observe(time.perf_counter() - start)
        return out

    @json_body.api(route="/predict")
    @refusals_as_400
    async def predict(
        self,
        captures: list[Capture],
        encoding: Encoding = "int16",
        confidence_level: ConfidenceLevel = 0.95,
        use_cache: bool = True,
    ) -> Prediction:
        """Locate the transmitter heard in one capture set."""
        return await self.localizer.predict(captures, encoding, confidence_level, use_cache)

    @json_body.api(route="/predict/batch")
    @refusals_as_400
    async def predict_batch(
        self, items: list[CaptureSetIn], confidence_level: ConfidenceLevel = 0.95, use_cache: bool = True
    ) -> BatchPrediction:
        """Locate 1-100 capture sets; a bad item gets its own error without failing the others."""
        return await self.localizer.predict_batch(items, confidence_level, use_cache)

    @bentoml.api(
        batchable=True, max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms
    )
    def infer(self, features: list[str]) -> list[list[float]]:
        """Adaptive-batched ONNX run over packed feature tensors (internal wire form)."""
        return self._run(unpack_features(features, self.onnx.contract)).tolist()


Heimdall.add_asgi_middleware(
    Admission,
    max_bytes=settings.max_body_bytes,
    max_in_flight=settings.max_in_flight,
    on_reject=lambda reason: _current().metrics.rejections.labels(reason).inc(),
)
