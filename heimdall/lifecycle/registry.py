"""Model lifecycle: MLflow registry -> BentoML model store.

`register` logs an ONNX model and its contract document to MLflow and points
an alias at the registered version. `import_model` resolves `models:/NAME@ALIAS`
or `models:/NAME/VERSION`, checks that this code can serve the model, and
copies model.onnx and contract.json into the BentoML model store, labelled
with where it came from. `load_bento_model` opens an imported model.

Without MLFLOW_TRACKING_URI the registry is a SQLite file under ./.heimdall.
Servability is checked on import, by the code that will serve the model: a
registry may hold models meant for newer serving code.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import bentoml
import mlflow
import mlflow.onnx
import numpy as np
import onnx
from bentoml.exceptions import NotFound
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from heimdall.contract.document import Accuracy, Contract
from heimdall.contract.servable import load_servable
from heimdall.lifecycle.progress import step

DEFAULT_NAME = "heimdall-localizer"
DEFAULT_ALIAS = "production"
EXPERIMENT = "heimdall"
MODEL_FILE, CONTRACT_FILE = "model.onnx", "contract.json"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
P = ParamSpec("P")
R = TypeVar("R")


class RegistryError(Exception):
    """The registry cannot be reached, or has no such model, or the request names none."""


@dataclass(frozen=True)
class Registered:
    """A registry version; `reused` when an identical model was registered before."""

    name: str
    version: str
    run_id: str
    alias: str
    reused: bool


def _mlflow_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Re-raise MLflow's failures as RegistryError, so callers handle one exception type."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"MLflow: {exc.message}") from exc

    return wrapper


def _metrics(accuracy: Accuracy) -> dict[str, float]:
    """The accuracy's figures as MLflow metrics; a condition's as `condition<i>.<figure>` (its name is
    free text, which metric names may not be)."""
    figures = {k: v for k, v in accuracy.model_dump(exclude={"conditions"}).items() if not isinstance(v, str)}
    for i, condition in enumerate(accuracy.conditions):
        for k, v in condition.model_dump().items():
            if not isinstance(v, str):
                figures[f"condition{i}.{k}"] = v
    return figures


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """`explicit`, else MLFLOW_TRACKING_URI, else sqlite:///<cwd>/.heimdall/mlflow.db."""
    if explicit:
        return explicit
    from mlflow.environment_variables import MLFLOW_TRACKING_URI

    return MLFLOW_TRACKING_URI.get() or f"sqlite:///{Path.cwd() / '.heimdall' / 'mlflow.db'}"


def public_uri(uri: str) -> str:
    """The URI without user:password or query string, fit to be stored or printed."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return uri  # also keeps sqlite:////abs/path intact, which urlunsplit would shorten
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))


def _client(uri: str) -> MlflowClient:
    """A client for `uri`, after a quick reachability check (MLflow's own retries take minutes)."""
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(public_uri(uri).rstrip("/") + "/health", timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable, whatever it thinks of /health
        except OSError as exc:
            raise RegistryError(f"MLflow tracking server {public_uri(uri)} is unreachable: {exc}") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)  # log_model and start_run use the global URI
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


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


@_mlflow_errors
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
    client = _client(uri)
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


def _bento_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63].rstrip("-._")
    if not slug:
        raise RegistryError(f"registered model name {name!r} has no characters usable in a BentoML tag")
    return slug


def _download(name: str, version: str, tracking: str, dst: Path) -> tuple[Path, Path]:
    """Download a registry version; return the paths of its ONNX graph and its contract document."""
    with step(f"Downloading {name} version {version}"):
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking, registry_uri=tracking
            )
        )
    model_path = local / MlflowModel.load(local).flavors.get("onnx", {}).get("data", MODEL_FILE)
    # `register` ships the contract as an MLflow extra file; other tools may put it at the top.
    candidates = (local / "extra_files" / CONTRACT_FILE, local / CONTRACT_FILE)
    return model_path, next((p for p in candidates if p.is_file()), candidates[0])


@_mlflow_errors
def import_model(uri: str, tracking_uri: str | None = None) -> bentoml.Model:
    """Import registry model `uri` into the BentoML model store; return the stored model.

    The BentoML tag is NAME:v{VERSION}-{contract fingerprint}-{ONNX sha256[:12]}, so importing the
    same registry version again returns the model already in the store.
    """
    match = _MODEL_URI.match(uri)
    if not match:
        raise RegistryError(f"model URI: expected models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")
    name, alias = match["name"], match["alias"]
    tracking = resolve_tracking_uri(tracking_uri)
    client = _client(tracking)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise RegistryError(f"{uri}: not found in {public_uri(tracking)} ({exc.message})") from None
    with tempfile.TemporaryDirectory(prefix="heimdall-import-") as tmp:
        model_path, contract_path = _download(name, str(mv.version), tracking, Path(tmp))
        contract = load_servable(model_path, contract_path, f"{uri} (version {mv.version})")
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        tag = bentoml.Tag(_bento_name(name), f"v{mv.version}-{contract.fingerprint()}-{digest[:12]}")
        try:
            return bentoml.models.get(tag)
        except NotFound:
            pass
        labels = {
            "registry_name": name,
            "registry_version": str(mv.version),
            "registry_alias": alias or "",
            "run_id": mv.run_id or "",
            "contract_fingerprint": contract.fingerprint(),
        }
        metadata: dict[str, Any] = {
            **labels,
            "registry_uri": f"models:/{name}/{mv.version}",
            "tracking_uri": public_uri(tracking),
            "contract_version": contract.contract_version,
            "onnx_sha256": digest,
        }
        if contract.accuracy:
            metadata["accuracy"] = contract.accuracy.model_dump(mode="json")
        with (
            step(f"Importing into the BentoML model store as {tag}"),
            bentoml.models.create(tag, labels=labels, metadata=metadata) as stored,
        ):
            shutil.copyfile(model_path, stored.path_of(MODEL_FILE))
            shutil.copyfile(contract_path, stored.path_of(CONTRACT_FILE))
    return bentoml.models.get(tag)


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
