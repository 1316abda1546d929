"""Model lifecycle: MLflow registry -> BentoML model store.

`register` logs an ONNX model and its contract document to MLflow and points
an alias at the registered version. `import_model` resolves `models:/NAME@ALIAS`
or `models:/NAME/VERSION`, checks that this code can serve the model, and
copies model.onnx and contract.json into the BentoML model store, labelled
with where it came from: the running service's own import path
(`heimdall.serving.registry`), with progress lines. `set_alias` moves an alias
(promote, roll back). `load_bento_model` opens an imported model.

Without MLFLOW_TRACKING_URI the registry is a SQLite file under ./.heimdall.
Servability is checked on import, by the code that will serve the model: a
registry may hold models meant for newer serving code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import bentoml
import mlflow
import mlflow.onnx
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from heimdall.contract.document import Accuracy, Contract
from heimdall.contract.servable import load_servable
from heimdall.lifecycle.progress import step
from heimdall.serving import registry as fetch
from heimdall.serving.registry import (
    CONTRACT_FILE,
    MODEL_FILE,
    RegistryError,
    mlflow_errors,
    public_uri,
    resolve_tracking_uri,
)

__all__ = ["RegistryError", "import_model", "load_bento_model", "register", "set_alias"]

DEFAULT_NAME = "heimdall-localizer"
DEFAULT_ALIAS = "production"
EXPERIMENT = "heimdall"


@dataclass(frozen=True)
class Registered:
    """A registry version; `reused` when an identical model was registered before."""

    name: str
    version: str
    run_id: str
    alias: str
    reused: bool


def _metrics(accuracy: Accuracy) -> dict[str, float]:
    """The accuracy's figures as MLflow metrics; a condition's as `condition<i>.<figure>` (its name is
    free text, which metric names may not be)."""
    figures = {k: v for k, v in accuracy.model_dump(exclude={"conditions"}).items() if not isinstance(v, str)}
    for i, condition in enumerate(accuracy.conditions):
        for k, v in condition.model_dump().items():
            if not isinstance(v, str):
                figures[f"condition{i}.{k}"] = v
    return figures


def _experiment_id(client: MlflowClient, uri: str) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found:
        return found.experiment_id
    location = None  # a tracking server chooses (and proxies) its own artifact store
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def _signature(contract: Contract) -> ModelSignature:
    io, f32 = contract.io, np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, *contract.input_shape), io.input)]),
        outputs=Schema([TensorSpec(f32, (-1, 2), io.mean), TensorSpec(f32, (-1, 3), io.covariance)]),
    )


@mlflow_errors
def register(
    model_dir: Path, name: str = DEFAULT_NAME, alias: str = DEFAULT_ALIAS, tracking_uri: str | None = None
) -> Registered:
    """Log model_dir/model.onnx with its contract.json, register it as `name` and point `alias` at it.

    A version whose ONNX digest and contract fingerprint match is reused, not duplicated.
    """
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / CONTRACT_FILE).is_file():
        raise RegistryError(
            f"{model_dir}: expected {MODEL_FILE} and {CONTRACT_FILE} (heimdall train writes them)"
        )
    try:
        contract = Contract.load(model_dir / CONTRACT_FILE)
    except ValueError as exc:
        raise RegistryError(f"{model_dir / CONTRACT_FILE}: not a contract document: {exc}") from None
    model = onnx.load(model_dir / MODEL_FILE)
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()  # the bytes MLflow will store
    tags = {"onnx_sha256": digest, "contract_fingerprint": contract.fingerprint()}
    uri = resolve_tracking_uri(tracking_uri)
    client = fetch.client(uri)
    query = " and ".join([f"name = '{name}'", *(f"tags.{k} = '{v}'" for k, v in tags.items())])
    if same := client.search_model_versions(query, order_by=["version_number ASC"], max_results=1):
        client.set_registered_model_alias(name, alias, same[0].version)
        return Registered(name, str(same[0].version), same[0].run_id or "", alias, reused=True)
    params = {f"features.{k}": v for k, v in contract.features.model_dump().items()}
    params |= {"receivers": ",".join(contract.receiver_ids), "contract_version": contract.contract_version}
    with mlflow.start_run(experiment_id=_experiment_id(client, uri), run_name=f"register-{name}") as run:
        mlflow.log_params(params)
        mlflow.set_tags(tags)
        if contract.accuracy:
            mlflow.log_metrics(_metrics(contract.accuracy))
        with step(f"Logging {model_dir / MODEL_FILE} to {public_uri(uri)}"):
            info = mlflow.onnx.log_model(
                model,
                name="model",
                extra_files=[str(model_dir / CONTRACT_FILE)],  # lands in extra_files/contract.json
                signature=_signature(contract),
                # Explicit requirements: inferring them would load the model in a subprocess.
                pip_requirements=[
                    f"onnx=={package_version('onnx')}",
                    f"onnxruntime=={package_version('onnxruntime')}",
                ],
                save_as_external_data=False,  # one self-contained model.onnx
            )
    with step(f"Registering {name}"):
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, alias, mv.version)
    return Registered(name, str(mv.version), run.info.run_id, alias, reused=False)


def import_model(uri: str, tracking_uri: str | None = None) -> bentoml.Model:
    """Import registry model `uri` into the BentoML model store, showing progress; return it."""
    return fetch.import_model(uri, tracking_uri, progress=step)


@mlflow_errors
def set_alias(name: str, alias: str, version: str, tracking_uri: str | None = None) -> str:
    """Point `name`@`alias` at `version` (promote, canary, roll back); return the version it left."""
    client = fetch.client(resolve_tracking_uri(tracking_uri))
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"models:/{name}/{version}: not found ({exc.message})") from None
    try:
        before = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        before = ""
    client.set_registered_model_alias(name, alias, version)
    return before


def load_bento_model(tag: str | bentoml.Tag | bentoml.Model) -> tuple[Path, Contract, dict[str, Any]]:
    """Open an imported model: (its directory, its contract, {tag, name, version, labels, metadata}).

    Checks servability again: the store may hold models imported by other means.
    """
    stored = tag if isinstance(tag, bentoml.Model) else bentoml.models.get(tag)
    model_dir = Path(stored.path)
    contract = load_servable(model_dir / MODEL_FILE, model_dir / CONTRACT_FILE, str(stored.tag))
    info = {
        "tag": str(stored.tag),
        "name": stored.tag.name,
        "version": stored.tag.version,
        "labels": dict(stored.info.labels),
        "metadata": dict(stored.info.metadata),
    }
    return model_dir, contract, info
