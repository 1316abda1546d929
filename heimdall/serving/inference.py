"""The ONNX model: one onnxruntime session, opened with explicit thread counts."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from heimdall.contract.document import Contract


class ModelOutput(NamedTuple):
    """What the model says about one capture set, in the contract's local frame."""

    east_m: float
    north_m: float
    sigma_east_m: float
    sigma_north_m: float
    rho: float


class OnnxModel:
    """Runs the contract's graph on a batch of feature tensors."""

    def __init__(self, model_path: Path, contract: Contract, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # Explicit: onnxruntime ignores OMP_NUM_THREADS, and with one worker
        # process per core a single intra-op thread gives the best throughput.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.contract = contract
        self._outputs = [contract.io.mean, contract.io.covariance]

    def run(self, features: np.ndarray) -> np.ndarray:
        """(batch, receivers, mels, frames) float32 -> (batch, 5) float64.

        Columns: east (m), north (m), sigma east (m), sigma north (m), correlation.
        """
        mean, cov = self.session.run(self._outputs, {self.contract.io.input: features})
        return np.concatenate([mean, cov], axis=1).astype(np.float64)

    def warm_up(self) -> ModelOutput:
        """One inference on a plausible input; raises if the graph cannot produce a valid answer."""
        features = np.zeros((1, *self.contract.input_shape), dtype=np.float32)
        features[:, : self.contract.min_receivers] = 1.0
        out = ModelOutput(*self.run(features)[0])
        if not (
            np.isfinite(out).all() and out.sigma_east_m > 0 and out.sigma_north_m > 0 and abs(out.rho) < 1
        ):
            raise RuntimeError(f"warm-up inference gave an invalid estimate: {out}")
        return out
