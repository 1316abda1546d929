"""The request path: decode -> validate -> cache -> (preprocess + batched inference) -> postprocess."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heimdall.contract.document import Contract
from heimdall.serving.cache import PredictionCache
from heimdall.serving.decode import CaptureSet, decode_captures, decode_octets
from heimdall.serving.errors import InputError
from heimdall.serving.inference import ModelOutput
from heimdall.serving.metrics import Metrics
from heimdall.serving.postprocess import describe
from heimdall.serving.schemas import BatchItem, BatchPrediction, Capture, CaptureSetIn, ItemError, Prediction
from heimdall.serving.settings import Settings

# One capture set (station id -> complex64 IQ) to its (5,) model output row; preprocesses off the loop.
Infer = Callable[[Mapping[str, np.ndarray]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ServedModel:
    """The model this service answers with, as imported from the registry."""

    name: str
    version: str
    contract: Contract
    labels: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0


class Pipeline:
    """Answers capture sets with positions; `infer` runs preprocessing and the model."""

    def __init__(self, model: ServedModel, settings: Settings, metrics: Metrics, infer: Infer) -> None:
        self.model = model
        self.settings = settings
        self.metrics = metrics
        namespace = f"{model.name}:{model.version}:{model.contract.fingerprint()}"
        self.cache = PredictionCache(settings, namespace, metrics)
        self._infer = infer
        self._estimate = self.cache.memoize(self._run_model)
        self.requests: Counter[str] = Counter()  # this worker's answers by source, and refusals

    async def _run_model(self, capture: CaptureSet) -> ModelOutput:
        return ModelOutput(*(float(v) for v in await self._infer(capture.iq)))

    def rejected(self, reason: str) -> None:
        """Counts a refusal: a whole request's (from any layer) or one batch item's."""
        self.metrics.rejections.labels(reason).inc()
        self.requests["rejected"] += 1

    def _decode_set(self, captures: list[Capture], encoding: str, field: str = "captures") -> CaptureSet:
        """Decodes, then empties `captures`: the caller's input model would keep those parsed
        lists (~10x the body's size for JSON lists) alive until the response is sent, and a
        worker holding many requests would hold them all.

        Decoding runs on the event loop: ~0.05 ms per receiver for the binary forms, ~0.7 ms
        for JSON lists. A thread would not help: decoding holds the GIL between numpy
        calls, and a thread waited up to a switch interval (5 ms) to get it back after
        each of them while the loop was busy, which made JSON-lists requests 10x slower."""
        contract, max_samples = self.model.contract, self.settings.max_samples
        try:
            return decode_captures(captures, encoding, contract, max_samples, field)
        finally:
            captures.clear()

    async def _answer(self, capture: CaptureSet, level: float, use_cache: bool, start: float) -> Prediction:
        result = await self._estimate(capture, use_cache=use_cache)
        source = "cache" if result.hit else "model"
        self.metrics.predictions.labels(source).inc()
        self.requests[f"answered_from_{source}"] += 1
        return Prediction(
            **describe(result.value, self.model.contract, level, self.settings.confidence_radius_m),
            receivers=[rid for rid in self.model.contract.receiver_ids if rid in capture.iq],
            model_name=self.model.name,
            model_version=self.model.version,
            cached=result.hit,
            server_ms=(time.perf_counter() - start) * 1e3,
        )

    def decode_rows(self, items: list[CaptureSetIn]) -> list[dict[str, np.ndarray]]:
        """Capture sets posted to the model's own route (`/infer`), decoded before they join a batch."""
        return [
            self._decode_set(item.captures, item.encoding, f"items[{i}].captures").iq
            for i, item in enumerate(items)
        ]

    async def predict(
        self, captures: list[Capture], encoding: str, level: float, use_cache: bool
    ) -> Prediction:
        start = time.perf_counter()
        return await self._answer(self._decode_set(captures, encoding), level, use_cache, start)

    async def predict_octets(
        self, body: bytes, stations: Sequence[str], encoding: str, level: float, use_cache: bool
    ) -> Prediction:
        start = time.perf_counter()
        capture = decode_octets(body, stations, encoding, self.model.contract, self.settings.max_samples)
        return await self._answer(capture, level, use_cache, start)

    async def predict_batch(
        self, items: list[CaptureSetIn], level: float, use_cache: bool
    ) -> BatchPrediction:
        """Each item is answered or refused on its own; good items run concurrently so they batch."""
        start = time.perf_counter()
        if not 1 <= len(items) <= self.settings.max_batch_items:
            raise InputError(
                "items", f"{len(items)} capture sets", f"1 to {self.settings.max_batch_items}", "batch_size"
            )

        async def one(i: int, item: CaptureSetIn) -> tuple[BatchItem, int]:
            try:
                capture = self._decode_set(item.captures, item.encoding, f"items[{i}].captures")
            except InputError as exc:
                self.rejected(exc.reason)
                error = ItemError(
                    field=exc.field,
                    received=exc.received,
                    expected=exc.expected,
                    reason=exc.reason,
                    message=str(exc),
                )
                return BatchItem(index=i, error=error), 0
            prediction = await self._answer(capture, level, use_cache, time.perf_counter())
            return BatchItem(index=i, prediction=prediction), capture.samples

        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        elapsed = time.perf_counter() - start
        succeeded = sum(1 for item, _ in results if item.prediction is not None)
        samples = sum(n for _, n in results)
        return BatchPrediction(
            items=[item for item, _ in results],
            succeeded=succeeded,
            failed=len(items) - succeeded,
            samples=samples,
            server_ms=elapsed * 1e3,
            captures_per_second=succeeded / elapsed,
            samples_per_second=samples / elapsed,
        )

    def info(self) -> dict[str, Any]:
        c = self.model.contract
        return {
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                **{k: v for k, v in self.model.labels.items() if k.startswith(("registry_", "run_id"))},
                "contract_version": c.contract_version,
                "contract_fingerprint": c.fingerprint(),
                "load_seconds": round(self.model.load_seconds, 4),
            },
            "receivers": [r.model_dump() for r in c.receivers],
            "min_receivers": c.min_receivers,
            "features": c.features.model_dump(),
            "accuracy": c.accuracy.model_dump() if c.accuracy else None,
            "requests": dict(self.requests),
            "cache": self.cache.stats(),
        }
