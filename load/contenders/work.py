"""What every contender does per capture set, built once per process from the model in the store:
decode (the service's decoder), features and ONNX (one thread, as a service worker), postprocess."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import bentoml
import numpy as np
from threadpoolctl import threadpool_limits

from heimdall.contract.document import Contract
from heimdall.contract.features import FeatureExtractor
from heimdall.serving.decode import decode_captures
from heimdall.serving.inference import ModelOutput, OnnxModel
from heimdall.serving.postprocess import describe


class Work:
    def __init__(self) -> None:
        threadpool_limits(1)
        model = bentoml.models.get(os.environ.get("HEIMDALL_MODEL_TAG", "heimdall-localizer:latest"))
        self.contract = Contract.load(Path(model.path_of("contract.json")))
        self.features = FeatureExtractor(self.contract)
        self.onnx = OnnxModel(model.path_of("model.onnx"), self.contract, threads=1)

    def decode(self, body: Mapping) -> dict[str, np.ndarray]:
        return decode_captures(body["captures"], body.get("encoding", "int16"), self.contract, 65536).iq

    def locate(self, sets: list[Mapping[str, np.ndarray]]) -> np.ndarray:
        return self.onnx.run(self.features.capture_sets(sets))

    def answer(self, row: np.ndarray, level: float = 0.95) -> dict:
        return describe(ModelOutput(*(float(v) for v in row)), self.contract, level, 10_000.0)
