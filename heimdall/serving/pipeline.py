"""The request path: decode -> validate -> route to a version -> cache -> (preprocess + batched
inference) -> postprocess. Shadow mode runs the candidate after the answer is sent."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import blake3
import numpy as np

from heimdall.serving.cache import Cached
from heimdall.serving.decode import CaptureSet, decode_captures, decode_octets
from heimdall.serving.errors import InputError
from heimdall.serving.inference import ModelOutput
from heimdall.serving.metrics import Metrics
from heimdall.serving.postprocess import describe
from heimdall.serving.schemas import BatchItem, BatchPrediction, Capture, CaptureSetIn, ItemError, Prediction
from heimdall.serving.settings import Settings
from heimdall.serving.shadow import disagreement
from heimdall.serving.versions import NO_ROUTING, LoadedModel, Roster, Routing, Row, ServedModel

# A row (a version and one capture set, station id -> complex64 IQ) to its (5,) model output;
# preprocesses off the loop.
Infer = Callable[[Row], Awaitable[np.ndarray]]
Estimate = Callable[..., Awaitable[Cached]]


class Pipeline:
    """Answers capture sets with positions from the roster's versions; `infer` runs a version."""

    def __init__(self, roster: Roster, settings: Settings, metrics: Metrics, infer: Infer) -> None:
        self.settings = settings
        self.metrics = metrics
        self._infer = infer
        self._estimators: dict[LoadedModel, Estimate] = {}
        self._shadows: set[asyncio.Task] = set()
        self.roster = roster
        self.swap(roster)
        self.requests: Counter[str] = Counter()  # this worker's answers by source, and refusals
        self.registry_state: dict[str, Any] = {}  # what the registry follower reports, for /v1/model

    @property
    def model(self) -> ServedModel:
        """The primary version, as imported."""
        return self.roster.primary.served

    def swap(self, roster: Roster) -> list[LoadedModel]:
        """Serve from `roster` from the next request on; return the versions it no longer holds.
        Requests that started earlier finish on the roster they read."""
        for model in roster.models():
            if model not in self._estimators:
                self._estimators[model] = model.cache.memoize(functools.partial(self._run_model, model))
        retired = [m for m in self.roster.models() if m not in roster.models()]
        self.roster = roster
        for model in retired:
            self._estimators.pop(model, None)
        return retired

    def _estimate(self, model: LoadedModel) -> Estimate:
        # A request that read the roster before a swap may name a version that just left it.
        found = self._estimators.get(model)
        return found or model.cache.memoize(functools.partial(self._run_model, model))

    async def _run_model(self, model: LoadedModel, capture: CaptureSet) -> ModelOutput:
        return ModelOutput(*(float(v) for v in await self._infer((model, capture.iq))))

    def rejected(self, reason: str) -> None:
        """Counts a refusal: a whole request's (from any layer) or one batch item's."""
        self.metrics.rejections.labels(reason).inc()
        self.requests["rejected"] += 1

    def _decode_set(
        self, roster: Roster, captures: list[Capture], encoding: str, field: str = "captures"
    ) -> CaptureSet:
        """Decodes, then empties `captures`: the caller's input model would keep those parsed
        lists (~10x the body's size for JSON lists) alive until the response is sent, and a
        worker holding many requests would hold them all.

        Decoding runs on the event loop: it is short (`make bench` times it per form), and
        a thread would not help: decoding holds the GIL between numpy calls, and a thread
        waits up to a switch interval to get it back after each of them while the loop is
        busy."""
        contract, max_samples = roster.primary.served.contract, self.settings.max_samples
        try:
            return decode_captures(captures, encoding, contract, max_samples, field)
        finally:
            captures.clear()

    async def _answer(
        self,
        roster: Roster,
        capture: CaptureSet,
        routing: Routing,
        level: float,
        use_cache: bool,
        start: float,
    ) -> Prediction:
        key = blake3.blake3(routing.client_key.encode()).digest() if routing.client_key else capture.digest
        model, shadow = roster.choose(key, routing.pin)
        result = await self._estimate(model)(capture, use_cache=use_cache)
        source = "cache" if result.hit else "model"
        served = model.served
        self.metrics.predictions.labels(source).inc()
        self.metrics.model_predictions.labels(served.version, roster.role(model)).inc()
        self.requests[f"answered_from_{source}"] += 1
        if shadow is not None:
            self._shadow(model, result.value, shadow, capture, use_cache)
        return Prediction(
            **describe(result.value, served.contract, level, self.settings.confidence_radius_m),
            receivers=[rid for rid in served.contract.receiver_ids if rid in capture.iq],
            model_name=served.name,
            model_version=served.version,
            cached=result.hit,
            server_ms=(time.perf_counter() - start) * 1e3,
        )

    def _shadow(
        self,
        primary: LoadedModel,
        answer: ModelOutput,
        shadow: LoadedModel,
        capture: CaptureSet,
        use_cache: bool,
    ) -> None:
        """Run `shadow` on the capture in the background and record how far it disagrees. At most as
        many at once as a worker takes requests: shadowing must never cost the primary its capacity."""
        if len(self._shadows) >= self.settings.max_in_flight:
            self.metrics.shadow_skipped.inc()
            return

        async def compare() -> None:
            other = (await self._estimate(shadow)(capture, use_cache=use_cache)).value
            d = disagreement(answer, primary.served.contract, other, shadow.served.contract)
            self.metrics.shadow_distance_km.observe(d.distance_km)
            self.metrics.shadow_ellipse_level.labels("primary").observe(d.candidate_in_primary)
            self.metrics.shadow_ellipse_level.labels("candidate").observe(d.primary_in_candidate)
            self.requests["shadowed"] += 1

        task = asyncio.create_task(compare())
        self._shadows.add(task)
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, task: asyncio.Task) -> None:
        self._shadows.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.requests["shadow_failed"] += 1

    def decode_rows(self, items: list[CaptureSetIn]) -> list[Row]:
        """Capture sets posted to the model's own route (`/infer`), decoded before they join a batch;
        the primary answers them."""
        roster = self.roster
        decoded = (
            self._decode_set(roster, it.captures, it.encoding, f"items[{i}].captures")
            for i, it in enumerate(items)
        )
        return [(roster.primary, capture.iq) for capture in decoded]

    async def predict(
        self,
        captures: list[Capture],
        encoding: str,
        level: float,
        use_cache: bool,
        routing: Routing = NO_ROUTING,
    ) -> Prediction:
        start, roster = time.perf_counter(), self.roster
        capture = self._decode_set(roster, captures, encoding)
        return await self._answer(roster, capture, routing, level, use_cache, start)

    async def predict_octets(
        self,
        body: bytes,
        stations: Sequence[str],
        encoding: str,
        level: float,
        use_cache: bool,
        routing: Routing = NO_ROUTING,
    ) -> Prediction:
        start, roster = time.perf_counter(), self.roster
        contract = roster.primary.served.contract
        capture = decode_octets(body, stations, encoding, contract, self.settings.max_samples)
        return await self._answer(roster, capture, routing, level, use_cache, start)

    async def predict_batch(
        self, items: list[CaptureSetIn], level: float, use_cache: bool, routing: Routing = NO_ROUTING
    ) -> BatchPrediction:
        """Each item is answered or refused on its own; good items run concurrently so they batch."""
        start, roster = time.perf_counter(), self.roster
        if not 1 <= len(items) <= self.settings.max_batch_items:
            raise InputError(
                "items", f"{len(items)} capture sets", f"1 to {self.settings.max_batch_items}", "batch_size"
            )

        async def one(i: int, item: CaptureSetIn) -> tuple[BatchItem, int]:
            try:
                capture = self._decode_set(roster, item.captures, item.encoding, f"items[{i}].captures")
                prediction = await self._answer(
                    roster, capture, routing, level, use_cache, time.perf_counter()
                )
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
        roster = self.roster
        c = roster.primary.served.contract
        return {
            "model": _describe(roster.primary, roster),
            "models": [_describe(m, roster) for m in roster.models()],
            "candidate": {"mode": roster.mode, "share": roster.share} if roster.candidate else None,
            "registry": self.registry_state,
            "receivers": [r.model_dump() for r in c.receivers],
            "min_receivers": c.min_receivers,
            "features": c.features.model_dump(),
            "accuracy": c.accuracy.model_dump() if c.accuracy else None,
            "requests": dict(self.requests),
            "cache": roster.primary.cache.stats(),
        }


def _describe(model: LoadedModel, roster: Roster) -> dict[str, Any]:
    served, c = model.served, model.served.contract
    return {
        "name": served.name,
        "version": served.version,
        "role": roster.role(model),
        **{k: v for k, v in served.labels.items() if k.startswith(("registry_", "run_id"))},
        "contract_version": c.contract_version,
        "contract_fingerprint": c.fingerprint(),
        "loaded_at": datetime.fromtimestamp(model.loaded_at, UTC).isoformat(timespec="seconds"),
        "load_seconds": round(served.load_seconds, 4),
    }
