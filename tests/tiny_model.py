"""A tiny, real, deterministic ONNX model that honours the contract, for tests.

The graph pools each receiver's features to one number (mean over mel bins
and frames), then maps those `receivers` numbers linearly to a position
(metres east/north, times `scale` so two "versions" answer differently) and to
a covariance: sigmas 1 000 .. 20 000 m through a sigmoid, correlation in
(-0.9, 0.9) through tanh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from heimdall.contract.document import Accuracy, Contract, FeatureSpec

OPSET = 17

TINY_ACCURACY = Accuracy(
    scenes=200,
    median_error_km=12.5,
    p95_error_km=48.0,
    coverage_50=0.52,
    coverage_95=0.94,
    baseline="power-weighted centroid of the heard receivers",
    baseline_median_error_km=31.0,
    baseline_p95_error_km=90.0,
)


def _graph(contract: Contract, scale: float, input_shape: tuple[int, int, int]) -> onnx.ModelProto:
    receivers = input_shape[0]
    rng = np.random.default_rng(7)
    weights = {
        "w_mean": (rng.normal(size=(receivers, 2)) * 5_000.0 * scale).astype(np.float32),
        "w_sigma": (rng.normal(size=(receivers, 2)) * 0.5).astype(np.float32),
        "w_rho": (rng.normal(size=(receivers, 1)) * 0.5).astype(np.float32),
        "sigma_span": np.array([19_000.0], dtype=np.float32),
        "sigma_min": np.array([1_000.0], dtype=np.float32),
        "rho_max": np.array([0.9], dtype=np.float32),
    }
    io = contract.io
    nodes = [
        # opset 17 ReduceMean takes its axes as an attribute (an input from opset 18)
        helper.make_node("ReduceMean", [io.input], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w_mean"], [io.mean]),
        helper.make_node("MatMul", ["pooled", "w_sigma"], ["sigma_logit"]),
        helper.make_node("Sigmoid", ["sigma_logit"], ["sigma_unit"]),
        helper.make_node("Mul", ["sigma_unit", "sigma_span"], ["sigma_scaled"]),
        helper.make_node("Add", ["sigma_scaled", "sigma_min"], ["sigma"]),
        helper.make_node("MatMul", ["pooled", "w_rho"], ["rho_logit"]),
        helper.make_node("Tanh", ["rho_logit"], ["rho_unit"]),
        helper.make_node("Mul", ["rho_unit", "rho_max"], ["rho"]),
        helper.make_node("Concat", ["sigma", "rho"], [io.covariance], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "heimdall-tiny",
        inputs=[helper.make_tensor_value_info(io.input, TensorProto.FLOAT, ["batch", *input_shape])],
        outputs=[
            helper.make_tensor_value_info(io.mean, TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info(io.covariance, TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="heimdall-tests"
    )
    model.ir_version = 8  # what onnxruntime accepts for opset 17
    onnx.checker.check_model(model, full_check=True)
    return model


def build_tiny_model(out_dir: Path, contract: Contract | None = None, scale: float = 1.0) -> Path:
    """Write out_dir/model.onnx and out_dir/contract.json; return out_dir."""
    contract = contract or Contract(accuracy=TINY_ACCURACY)
    return _write(out_dir, contract, _graph(contract, scale, contract.input_shape))


def build_incompatible_model(
    out_dir: Path, problem: Literal["contract_version", "input_shape"] = "input_shape"
) -> Path:
    """Write a model the serving code must refuse; return out_dir.

    "contract_version": a valid graph whose contract says version 99.
    "input_shape": the contract says 32 mel bins but the graph takes 16.
    """
    contract = Contract(accuracy=TINY_ACCURACY)
    graph = _graph(contract, 1.0, contract.input_shape)
    if problem == "contract_version":
        contract = contract.model_copy(update={"contract_version": 99})
    else:
        narrow = Contract(features=FeatureSpec(n_mels=16))
        graph = _graph(narrow, 1.0, narrow.input_shape)
    return _write(out_dir, contract, graph)


def _write(out_dir: Path, contract: Contract, model: onnx.ModelProto) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, out_dir / "model.onnx")
    (out_dir / "contract.json").write_text(contract.to_json())
    return out_dir
