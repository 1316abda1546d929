"""The model versions a worker holds: each one opened, warmed up and cached apart, and the roster
(primary, and optionally a candidate) that the request path reads once per request.

A roster is immutable and replaced whole, so a request that read it keeps the versions it
started with while the follower swaps in a new one (`heimdall.serving.follower`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import bentoml
import numpy as np

from heimdall.contract.document import Contract
from heimdall.contract.features import FeatureExtractor
from heimdall.contract.servable import ModelNotServable, load_servable
from heimdall.serving.cache import PredictionCache
from heimdall.serving.errors import InputError
from heimdall.serving.inference import OnnxModel
from heimdall.serving.metrics import Metrics
from heimdall.serving.settings import Settings

Role = Literal["primary", "candidate"]
Mode = Literal["canary", "shadow"]
# One capture set with the version that answers it: the adaptive batcher's unit.
Row = tuple["LoadedModel", Mapping[str, np.ndarray]]
PIN_HEADER = "Heimdall-Model-Version"
CLIENT_KEY_HEADER = "Heimdall-Client-Key"


class Routing(NamedTuple):
    """What a request says about the version that should answer it (from its headers)."""

    client_key: str | None = None  # `Heimdall-Client-Key`: a canary keeps a client on one side
    pin: str | None = None  # `Heimdall-Model-Version`: a loaded version, by name (debugging)

    @classmethod
    def from_headers(cls, get: Callable[[str], str | None]) -> Routing:
        """`get` looks a header up by its lower-case name."""
        return cls(get(CLIENT_KEY_HEADER.lower()) or None, get(PIN_HEADER.lower()))


NO_ROUTING = Routing()


@dataclass(frozen=True)
class ServedModel:
    """A model as imported into the BentoML store: its tag, contract and registry labels."""

    name: str
    version: str
    contract: Contract
    labels: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0

    @property
    def registry_version(self) -> str | None:
        return self.labels.get("registry_version") or None


@dataclass(eq=False)
class LoadedModel:
    """One version, ready to answer: its graph session, feature extractor and cache namespace."""

    served: ServedModel
    onnx: OnnxModel
    features: FeatureExtractor
    cache: PredictionCache
    metrics: Metrics
    loaded_at: float = field(default_factory=time.time)

    def locate(self, items: list[Mapping[str, np.ndarray]]) -> np.ndarray:
        """Capture sets -> (n, 5) model outputs: features and one ONNX run (call it in a worker thread)."""
        start = time.perf_counter()
        features = self.features.capture_sets(items)
        ready = time.perf_counter()
        out = self.onnx.run(features)
        self.metrics.preprocess_seconds.observe(ready - start)
        self.metrics.inference_seconds.observe(time.perf_counter() - ready)
        return out

    def names(self) -> set[str]:
        """What a request may pin this version by: its BentoML version or its registry version."""
        return {self.served.version} | ({self.served.registry_version} - {None})  # type: ignore[operator]


def locate_rows(rows: list[Row]) -> np.ndarray:
    """A batch's (n, 5) outputs, one feature pass and ONNX run per version in it (worker thread)."""
    out = np.empty((len(rows), 5))
    by_model: dict[LoadedModel, list[int]] = {}
    for i, (model, _) in enumerate(rows):
        by_model.setdefault(model, []).append(i)
    for model, index in by_model.items():
        out[index] = model.locate([rows[i][1] for i in index])
    return out


def open_model(stored: bentoml.Model, settings: Settings, metrics: Metrics) -> LoadedModel:
    """Open and warm up a stored model; raises (ModelNotServable, RuntimeError, onnxruntime's
    errors) unless it gives a valid answer, so a broken version never reaches a roster."""
    start = time.perf_counter()
    graph = Path(stored.path_of("model.onnx"))
    contract = load_servable(graph, Path(stored.path_of("contract.json")), str(stored.tag))
    onnx = OnnxModel(graph, contract, threads=settings.onnx_threads)
    onnx.warm_up()
    features = FeatureExtractor(contract)
    features.warm_up()
    served = ServedModel(
        name=stored.tag.name,
        version=str(stored.tag.version),  # a stored model's tag always has one
        contract=contract,
        labels=dict(stored.info.labels),
        load_seconds=time.perf_counter() - start,
    )
    namespace = f"{served.name}:{served.version}:{contract.fingerprint()}"
    return LoadedModel(served, onnx, features, PredictionCache(settings, namespace, metrics), metrics)


def _accepts_the_same(primary: Contract, candidate: Contract) -> bool:
    """Requests are decoded against the primary's contract, so a candidate must take the same input."""
    return (primary.receiver_ids, primary.min_receivers, primary.features.min_samples) == (
        candidate.receiver_ids,
        candidate.min_receivers,
        candidate.features.min_samples,
    )


@dataclass(frozen=True)
class Roster:
    """The versions a worker answers with. `share` is the canary's share of keys, in [0, 1]."""

    primary: LoadedModel
    candidate: LoadedModel | None = None
    mode: Mode = "canary"
    share: float = 0.0

    def __post_init__(self) -> None:
        c = self.candidate
        if c is not None and not _accepts_the_same(self.primary.served.contract, c.served.contract):
            raise ModelNotServable(
                f"candidate {c.served.name}:{c.served.version} takes other input than the primary "
                f"{self.primary.served.version} (receivers, minimum receivers or minimum samples differ)"
            )

    def models(self) -> list[LoadedModel]:
        return [self.primary] + ([self.candidate] if self.candidate else [])

    def role(self, model: LoadedModel) -> Role:
        return "primary" if model is self.primary else "candidate"

    def choose(self, key: bytes, pin: str | None) -> tuple[LoadedModel, LoadedModel | None]:
        """(the version that answers, the version that shadows it or None).

        `key` (the client key, else the capture digest) puts a client on one side of the
        canary split on every worker: its first 8 bytes of BLAKE3 as a fraction of 2^64.
        """
        if pin is not None:
            for model in self.models():
                if pin in model.names():
                    return model, None
            loaded = sorted(n for m in self.models() for n in m.names())
            raise InputError(PIN_HEADER, pin, f"a loaded model version, one of {loaded}", "unknown_version")
        if self.candidate is None:
            return self.primary, None
        if self.mode == "shadow":
            return self.primary, self.candidate
        if int.from_bytes(key[:8], "big") / 2**64 < self.share:
            return self.candidate, None
        return self.primary, None
