"""The answer a served model should give, computed in the test process (no server)."""

from __future__ import annotations

from heimdall.contract.document import Contract
from heimdall.contract.features import FeatureExtractor, iq_from_int16
from heimdall.serving.inference import ModelOutput, OnnxModel
from heimdall.serving.postprocess import describe
from heimdall.training.examples import example_captures


def in_process_prediction(model) -> dict:
    """The prediction for the example capture set with `model` (a BentoML model): features,
    ONNX and postprocessing called directly."""
    contract = Contract.load(model.path_of("contract.json"))
    captures = example_captures()
    features = FeatureExtractor(contract).capture_sets([{s: iq_from_int16(v) for s, v in captures.items()}])
    out = ModelOutput(*OnnxModel(model.path_of("model.onnx"), contract).run(features)[0])
    return describe(out, contract, 0.95, 10_000.0)
