"""MLflow registry -> BentoML model store, against real MLflow backends and a real model store.

The BentoML store is shared by the whole test session, so every test registers
under its own model name and only looks at that name in the store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort
import pytest
from bentoml.exceptions import NotFound
from mlflow import MlflowClient
from tiny_model import TINY_ACCURACY, build_incompatible_model, build_tiny_model

from heimdall.contract.document import Contract
from heimdall.contract.servable import ModelNotServable
from heimdall.lifecycle.cli import main
from heimdall.lifecycle.registry import RegistryError, import_model, load_bento_model, register
from heimdall.serving import registry as serving_registry


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "v1": build_tiny_model(root / "v1"),
        "v2": build_tiny_model(root / "v2", scale=2.0),
        "input_shape": build_incompatible_model(root / "input_shape", "input_shape"),
        "contract_version": build_incompatible_model(root / "contract_version", "contract_version"),
    }


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def name() -> str:
    return f"heimdall-test-{uuid.uuid4().hex[:8]}"


def stored(name: str) -> list[bentoml.Model]:
    """The models in the BentoML store under `name`."""
    try:
        return bentoml.models.list(name)
    except NotFound:  # BentoML's answer when no model of that name was ever saved
        return []


def predict(model_dir: Path, contract: Contract) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    features = np.linspace(-1, 1, np.prod(contract.input_shape), dtype=np.float32).reshape(
        1, *contract.input_shape
    )
    return np.concatenate(
        session.run([contract.io.mean, contract.io.covariance], {"features": features}), axis=1
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_register_then_import_by_alias(models: dict[str, Path], sqlite_uri: str, name: str) -> None:
    reg = register(models["v1"], name=name, tracking_uri=sqlite_uri)
    assert (reg.name, reg.version, reg.alias, reg.reused) == (name, "1", "production", False)

    run = MlflowClient(sqlite_uri).get_run(reg.run_id)
    assert run.data.params["features.n_mels"] == "32"
    assert run.data.params["receivers"].split(",")[0] == "giaveno"
    assert run.data.metrics["median_error_km"] == TINY_ACCURACY.median_error_km

    model = import_model(f"models:/{name}@production", tracking_uri=sqlite_uri)
    contract = Contract.load(models["v1"] / "contract.json")
    fingerprint = contract.fingerprint()
    assert model.tag.name == name
    assert model.tag.version.startswith(f"v1-{fingerprint}-")
    assert model.info.labels == {
        "registry_name": name,
        "registry_version": "1",
        "registry_alias": "production",
        "run_id": reg.run_id,
        "contract_fingerprint": fingerprint,
    }
    meta = model.info.metadata
    assert meta["registry_uri"] == f"models:/{name}/1"
    assert meta["tracking_uri"] == sqlite_uri
    assert meta["contract_version"] == contract.contract_version
    assert meta["accuracy"] == TINY_ACCURACY.model_dump(mode="json")

    model_dir, loaded, info = load_bento_model(model.tag)
    assert loaded == contract
    assert info["tag"] == str(model.tag) and info["labels"]["registry_version"] == "1"
    np.testing.assert_array_equal(predict(model_dir, loaded), predict(models["v1"], contract))


def test_registering_the_same_model_twice_gives_one_version(
    models: dict[str, Path], sqlite_uri: str, name: str
) -> None:
    first = register(models["v1"], name=name, tracking_uri=sqlite_uri)
    again = register(models["v1"], name=name, alias="staging", tracking_uri=sqlite_uri)
    assert (again.version, again.run_id, again.reused) == (first.version, first.run_id, True)
    client = MlflowClient(sqlite_uri, sqlite_uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert str(client.get_model_version_by_alias(name, "staging").version) == first.version


def test_new_version_moves_the_alias_and_versions_import_apart(
    models: dict[str, Path], sqlite_uri: str, name: str
) -> None:
    register(models["v1"], name=name, tracking_uri=sqlite_uri)
    reg2 = register(models["v2"], name=name, tracking_uri=sqlite_uri)
    assert reg2.version == "2"

    latest = import_model(f"models:/{name}@production", tracking_uri=sqlite_uri)
    first = import_model(f"models:/{name}/1", tracking_uri=sqlite_uri)
    assert latest.info.labels["registry_version"] == "2"
    assert first.info.labels["registry_version"] == "1"
    assert first.info.labels["registry_alias"] == ""  # imported by explicit version
    assert latest.tag != first.tag
    contract = Contract.load(models["v1"] / "contract.json")
    np.testing.assert_allclose(
        predict(Path(latest.path), contract)[:, :2], 2 * predict(Path(first.path), contract)[:, :2], rtol=1e-5
    )
    assert {m.tag for m in stored(name)} == {latest.tag, first.tag}


def test_importing_twice_gives_one_model(models: dict[str, Path], sqlite_uri: str, name: str) -> None:
    register(models["v1"], name=name, tracking_uri=sqlite_uri)
    first = import_model(f"models:/{name}@production", tracking_uri=sqlite_uri)
    again = import_model(f"models:/{name}/1", tracking_uri=sqlite_uri)
    assert again.tag == first.tag
    assert again.info.creation_time == first.info.creation_time
    assert len(stored(name)) == 1


def test_a_version_already_stored_is_not_downloaded_again(
    models: dict[str, Path], sqlite_uri: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the second worker of a service, and a rollback, find the first import in the store
    register(models["v1"], name=name, tracking_uri=sqlite_uri)
    first = import_model(f"models:/{name}@production", tracking_uri=sqlite_uri)
    downloads: list[str] = []
    monkeypatch.setattr(serving_registry, "_download", lambda name, version, *_: downloads.append(version))
    again = serving_registry.import_model(f"models:/{name}@production", tracking_uri=sqlite_uri, version="1")
    assert (again.tag, downloads) == (first.tag, [])


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("input_shape", "input 'features' shape: expected (batch, 7, 32, 31), found (batch, 7, 16, 31)"),
        ("contract_version", "contract_version: expected one of [1, 2], found 99"),
    ],
)
def test_incompatible_model_is_refused_and_nothing_is_stored(
    models: dict[str, Path], sqlite_uri: str, name: str, problem: str, message: str
) -> None:
    register(models[problem], name=name, tracking_uri=sqlite_uri)
    with pytest.raises(ModelNotServable) as refused:
        import_model(f"models:/{name}@production", tracking_uri=sqlite_uri)
    assert message in str(refused.value)
    assert str(refused.value).startswith(f"models:/{name}@production (version 1) cannot be served")
    assert stored(name) == []


@pytest.mark.parametrize(
    "uri",
    ["models:/", "models:/heimdall-localizer", "models:/heimdall-localizer/latest", "runs:/abc/model", ""],
)
def test_malformed_uri_is_refused(uri: str, sqlite_uri: str) -> None:
    with pytest.raises(RegistryError, match="expected models:/NAME@ALIAS or models:/NAME/VERSION"):
        import_model(uri, tracking_uri=sqlite_uri)


def test_unknown_alias_is_a_clear_error(models: dict[str, Path], sqlite_uri: str, name: str) -> None:
    register(models["v1"], name=name, tracking_uri=sqlite_uri)
    with pytest.raises(RegistryError, match=f"models:/{name}@nope: not found"):
        import_model(f"models:/{name}@nope", tracking_uri=sqlite_uri)


def test_unreachable_tracking_server_fails_fast(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(RegistryError, match=f"MLflow tracking server {uri} is unreachable"):
        import_model("models:/heimdall-localizer@production", tracking_uri=uri)
    with pytest.raises(RegistryError, match="unreachable"):
        register(models["v1"], tracking_uri=uri)
    assert time.monotonic() - start < 5


def test_cli_register_and_import(
    models: dict[str, Path], sqlite_uri: str, name: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    assert main(["register", "--model", str(models["v1"]), "--name", name, "--alias", "canary"]) == 0
    assert f"models:/{name}@canary -> version 1" in capsys.readouterr().out
    assert main(["import", f"models:/{name}@canary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name}:v1-") and "registry_alias=canary" in out


def test_cli_errors_are_one_line_without_traceback(models: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    cases = {
        "import": ["import", "models:/heimdall-localizer"],
        "unreachable": ["import", "models:/heimdall-localizer@production"],
        "refused": ["register", "--model", str(tmp_path / "missing")],
    }
    for case, argv in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "heimdall.lifecycle.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, case
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr


def test_cli_train_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees when it is not installed
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[train\]'"):
        main(["train", "--out", str(tmp_path), "--seed", "0"])


@pytest.mark.slow
def test_server_register_and_import(models: dict[str, Path], mlflow_server: str, name: str) -> None:
    reg = register(models["v1"], name=name, tracking_uri=mlflow_server)
    assert register(models["v1"], name=name, tracking_uri=mlflow_server).version == reg.version

    model = import_model(f"models:/{name}@production", tracking_uri=mlflow_server)
    assert model.info.labels["registry_name"] == name
    assert model.info.labels["run_id"] == reg.run_id
    assert model.info.metadata["tracking_uri"] == mlflow_server
    assert import_model(f"models:/{name}/{reg.version}", tracking_uri=mlflow_server).tag == model.tag
    assert len(stored(name)) == 1
    _, contract, _ = load_bento_model(model.tag)
    assert contract == Contract.load(models["v1"] / "contract.json")


@pytest.mark.slow
def test_server_credentials_are_not_stored(models: dict[str, Path], mlflow_server: str, name: str) -> None:
    with_credentials = mlflow_server.replace("http://", "http://reader:s3cret@")
    register(models["v1"], name=name, tracking_uri=mlflow_server)
    model = import_model(f"models:/{name}@production", tracking_uri=with_credentials)
    assert model.info.metadata["tracking_uri"] == mlflow_server


@pytest.mark.slow
def test_server_refuses_incompatible_model(models: dict[str, Path], mlflow_server: str, name: str) -> None:
    register(models["input_shape"], name=name, tracking_uri=mlflow_server)
    with pytest.raises(ModelNotServable, match=r"expected \(batch, 7, 32, 31\), found \(batch, 7, 16, 31\)"):
        import_model(f"models:/{name}@production", tracking_uri=mlflow_server)
    assert stored(name) == []
