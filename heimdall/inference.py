"""The ONNX model: one onnxruntime session, opened with explicit thread counts."""

from __future__ import annotations

from typing import NamedTuple


class ModelOutput(NamedTuple):
    """What the model says about one capture set, in the contract's local frame."""

    east_m: float
    north_m: float
    sigma_east_m: float
    sigma_north_m: float
    rho: float
