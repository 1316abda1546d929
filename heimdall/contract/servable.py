"""What this code can serve: a contract version it knows, and a graph whose inputs
and outputs match what the contract promises. Checked on import into the BentoML
store, by the code that will serve the model, so a refusal names each difference,
and again when the service starts: the store may hold models imported by other means."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from pydantic import ValidationError

from heimdall.contract.document import SUPPORTED_CONTRACT_VERSIONS, Contract


class ModelNotServable(Exception):
    """A model or contract this code cannot serve (wrong contract version, shapes or outputs)."""


def read_contract(path: Path) -> Contract:
    """Parse a contract document, refusing versions this code does not serve before the schema."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotServable(f"contract: cannot read {path}: {exc}") from None
    found = raw.get("contract_version") if isinstance(raw, dict) else None
    if found not in SUPPORTED_CONTRACT_VERSIONS:
        raise ModelNotServable(
            f"contract_version: expected one of {sorted(SUPPORTED_CONTRACT_VERSIONS)}, found {found!r}"
        )
    try:
        return Contract.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelNotServable(f"contract: {problems}") from None


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _shape(dims: list[int | str]) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


def check_servable(model: onnx.ModelProto, contract: Contract) -> None:
    """Raise ModelNotServable naming every way the graph differs from what the contract promises."""
    problems: list[str] = []
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    expected_in: list[int | str] = ["batch", *contract.input_shape]
    if contract.io.input not in inputs:
        problems.append(f"input: expected {contract.io.input!r}, found {sorted(inputs)}")
    else:
        found = _dims(inputs[contract.io.input])
        if len(found) != 4 or isinstance(found[0], int) or found[1:] != list(contract.input_shape):
            problems.append(
                f"input {contract.io.input!r} shape: expected {_shape(expected_in)}, found {_shape(found)}"
            )
        if inputs[contract.io.input].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"input {contract.io.input!r} type: expected float32")
    outputs = {o.name: o for o in model.graph.output}
    for name, width in ((contract.io.mean, 2), (contract.io.covariance, 3)):
        if name not in outputs:
            problems.append(f"output: expected {name!r}, found {sorted(outputs)}")
        elif (found := _dims(outputs[name]))[1:] != [width] or len(found) != 2:
            problems.append(f"output {name!r} shape: expected (batch, {width}), found {_shape(found)}")
    if problems:
        raise ModelNotServable("; ".join(problems))


def load_servable(model_path: Path, contract_path: Path, what: str) -> Contract:
    """The contract, once the graph is known to match it; ModelNotServable names `what` and the problem."""
    try:
        contract = read_contract(contract_path)
        try:
            graph = onnx.load(model_path)
        except (OSError, DecodeError) as exc:
            raise ModelNotServable(f"model: cannot read {model_path} as an ONNX graph: {exc}") from None
        check_servable(graph, contract)
    except ModelNotServable as exc:
        raise ModelNotServable(f"{what} cannot be served: {exc}") from None
    return contract
