"""The registry client of the running service: resolve `models:/NAME@ALIAS`, fetch a version.

A fetched version goes through the one import path: download from MLflow, the
servability checks (`heimdall.contract.servable`), then into the BentoML model store,
labelled with where it came from. Workers of one service import under a file lock, so
the first imports and the others find the stored model. This module needs only an
MLflow client (`mlflow-skinny`, a core dependency); registering models needs the full
MLflow (`heimdall.lifecycle.registry`).

Without MLFLOW_TRACKING_URI the registry is a SQLite file under ./.heimdall (which takes
the full MLflow: the SQL store is not in mlflow-skinny).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import bentoml
import mlflow
from bentoml.exceptions import NotFound
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel

from heimdall.contract.servable import load_servable
from heimdall.serving.settings import MODEL_URI

MODEL_FILE, CONTRACT_FILE = "model.onnx", "contract.json"
P = ParamSpec("P")
R = TypeVar("R")
Progress = Callable[[str], AbstractContextManager[None]]


class RegistryError(Exception):
    """The registry cannot be reached, or has no such model, or the request names none."""


class NotInRegistry(RegistryError):
    """The registry answered: it has no such model, version or alias."""


@dataclass(frozen=True)
class RegistryRef:
    """A parsed model URI: `alias` or `version` is set, never both."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> RegistryRef:
        match = MODEL_URI.match(uri)
        if not match:
            raise RegistryError(
                f"model URI: expected models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}"
            )
        return cls(match["name"], match["alias"], match["version"])

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def mlflow_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Re-raise MLflow's failures as RegistryError, so callers handle one exception type."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MlflowException as exc:
            raise RegistryError(f"MLflow: {exc.message}") from exc

    return wrapper


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


def client(uri: str) -> MlflowClient:
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


@mlflow_errors
def resolve(ref: RegistryRef, tracking_uri: str | None = None) -> str:
    """The registry version `ref` names now (one registry call for an alias)."""
    if ref.alias is None:
        return str(ref.version)
    tracking = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(tracking)  # RegistryError when unreachable
    try:
        return str(mlflow_client.get_model_version_by_alias(ref.name, ref.alias).version)
    except MlflowException as exc:
        raise NotInRegistry(f"{ref}: not found in {public_uri(tracking)} ({exc.message})") from None


def _bento_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63].rstrip("-._")
    if not slug:
        raise RegistryError(f"registered model name {name!r} has no characters usable in a BentoML tag")
    return slug


@contextlib.contextmanager
def _quiet(_: str) -> Iterator[None]:
    yield


def _download(name: str, version: str, tracking: str, dst: Path, progress: Progress) -> tuple[Path, Path]:
    """Download a registry version; return the paths of its ONNX graph and its contract document."""
    with progress(f"Downloading {name} version {version}"):
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking, registry_uri=tracking
            )
        )
    model_path = local / MlflowModel.load(local).flavors.get("onnx", {}).get("data", MODEL_FILE)
    # `register` ships the contract as an MLflow extra file; other tools may put it at the top.
    candidates = (local / "extra_files" / CONTRACT_FILE, local / CONTRACT_FILE)
    return model_path, next((p for p in candidates if p.is_file()), candidates[0])


@contextlib.contextmanager
def _import_lock(name: str) -> Iterator[None]:
    """One importer of `name` at a time on this machine: the workers of a service follow one alias."""
    with (Path(tempfile.gettempdir()) / f"heimdall-import-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stored(bento_name: str, mv: Any, tracking: str) -> bentoml.Model | None:
    """The stored import of registry version `mv` from `tracking`, if the store holds one.

    The run id tells apart two registries that reused a tracking URI and a version number."""
    try:
        models = bentoml.models.list(bento_name)
    except NotFound:  # BentoML's answer when no model of that name was ever saved
        return None
    for model in models:
        labels, metadata = model.info.labels, model.info.metadata
        if (
            labels.get("registry_version") == str(mv.version)
            and labels.get("run_id") == (mv.run_id or "")
            and metadata.get("tracking_uri") == tracking
        ):
            return model
    return None


@mlflow_errors
def import_model(
    uri: str, tracking_uri: str | None = None, version: str | None = None, progress: Progress = _quiet
) -> bentoml.Model:
    """Import registry model `uri` into the BentoML model store; return the stored model.

    `version`, when given, is what `uri`'s alias was resolved to (the label keeps the alias).
    The BentoML tag is NAME:v{VERSION}-{contract fingerprint}-{ONNX sha256[:12]}, so importing
    the same registry version again returns the model already in the store.
    """
    ref = RegistryRef.parse(uri)
    tracking = resolve_tracking_uri(tracking_uri)
    mlflow_client = client(tracking)
    try:
        if pinned := version or ref.version:
            mv = mlflow_client.get_model_version(ref.name, pinned)
        else:
            mv = mlflow_client.get_model_version_by_alias(ref.name, str(ref.alias))  # parse: one is set
    except MlflowException as exc:
        raise NotInRegistry(f"{uri}: not found in {public_uri(tracking)} ({exc.message})") from None
    with tempfile.TemporaryDirectory(prefix="heimdall-import-") as tmp, _import_lock(_bento_name(ref.name)):
        # Checked under the lock: the workers of a service move together, and the first one's import
        # serves the others, and a rollback, without a second download and hash.
        if (held := _stored(_bento_name(ref.name), mv, public_uri(tracking))) is not None:
            return held
        model_path, contract_path = _download(ref.name, str(mv.version), tracking, Path(tmp), progress)
        contract = load_servable(model_path, contract_path, f"{uri} (version {mv.version})")
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        tag = bentoml.Tag(_bento_name(ref.name), f"v{mv.version}-{contract.fingerprint()}-{digest[:12]}")
        try:
            return bentoml.models.get(tag)
        except NotFound:
            pass
        labels = {
            "registry_name": ref.name,
            "registry_version": str(mv.version),
            "registry_alias": ref.alias or "",
            "run_id": mv.run_id or "",
            "contract_fingerprint": contract.fingerprint(),
        }
        metadata: dict[str, Any] = {
            **labels,
            "registry_uri": f"models:/{ref.name}/{mv.version}",
            "tracking_uri": public_uri(tracking),
            "contract_version": contract.contract_version,
            "onnx_sha256": digest,
        }
        if contract.accuracy:
            metadata["accuracy"] = contract.accuracy.model_dump(mode="json")
        with (
            progress(f"Importing into the BentoML model store as {tag}"),
            bentoml.models.create(tag, labels=labels, metadata=metadata) as stored,
        ):
            shutil.copyfile(model_path, stored.path_of(MODEL_FILE))
            shutil.copyfile(contract_path, stored.path_of(CONTRACT_FILE))
    return bentoml.models.get(tag)
