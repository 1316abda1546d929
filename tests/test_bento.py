"""The release path for real: build the Bento from the imported model, read its Dockerfile,
export it, import it into an empty BentoML home and serve it from there with an environment
that has only the core pins, so the Bento's own src/ is what runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from core_env import PINS, core_env
from expected import in_process_prediction
from support import POSITION_TOLERANCE_DEG, free_port, is_ready, stop_group, wait_until

from heimdall.lifecycle.release import PROJECT_DIR, build_bento, container_engine
from heimdall.training.examples import example_captures, request_body

BENTOML = [sys.executable, "-m", "bentoml"]


@pytest.fixture(scope="module")
def model(reference_tag):
    import bentoml

    return bentoml.models.get(reference_tag)


@pytest.fixture(scope="module")
def bento(model):
    built, _ = build_bento(model)
    return built


def test_version_and_labels_say_which_model_is_served(bento, model):
    labels = model.info.labels
    registry_version, fingerprint, digest = bento.tag.version.split("-")
    assert registry_version == f"v{labels['registry_version']}"
    assert fingerprint == labels["contract_fingerprint"][:8]
    assert digest == bento.info.labels["content_digest"][:10]
    for key in ("registry_name", "registry_version", "registry_alias", "run_id", "contract_fingerprint"):
        assert bento.info.labels[key] == labels[key]
    assert bento.info.labels["model_tag"] == str(model.tag)
    served = [m.tag for s in bento.info.services for m in s.models]
    assert [str(t) for t in served] == [str(model.tag)]


def test_same_inputs_give_the_same_bento(bento, model):
    again, reused = build_bento(model)
    assert reused and again.tag == bento.tag


def test_bento_carries_only_the_service_code_and_the_pyproject_pins(bento):
    src = Path(bento.path) / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert {"service.py", "heimdall/serving/pipeline.py", "heimdall/contract/document.py"} <= files
    map_page = Path(__file__).resolve().parents[1] / "heimdall" / "serving" / "map"
    assert {f"heimdall/serving/map/{p.name}" for p in map_page.iterdir()} <= files
    assert not any(
        f.startswith(("tests/", "load/", "heimdall/lifecycle/", "heimdall/training/", "heimdall/reference/"))
        for f in files
    )
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().split()
    assert set(PINS) <= set(requirements)
    assert all("==" in r for r in requirements)


def test_dockerfile_has_what_the_image_needs(bento, model, tmp_path):
    import bentoml

    out = tmp_path / "Dockerfile"
    bentoml.container.get_containerfile(str(bento.tag), output_path=str(out))
    dockerfile = out.read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert "EXPOSE 3000" in dockerfile
    assert "entrypoint.sh" in dockerfile
    assert "ENV HEIMDALL_MODEL_TAG=$HEIMDALL_MODEL_TAG" in dockerfile
    assert f"ARG HEIMDALL_MODEL_TAG={model.tag}" in dockerfile
    assert "ARG HEIMDALL_WORKERS=2" in dockerfile
    assert "REDIS" not in dockerfile  # unset: the in-process cache; no secrets baked in
    entrypoint = (Path(bento.path) / "env" / "docker" / "entrypoint.sh").read_text()
    assert "bentoml" in entrypoint and "serve" in entrypoint


def test_no_engine_that_can_run_the_base_means_no_image_not_a_crash():
    assert container_engine("localhost/heimdall-base:no-such-tag") is None


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served_bento(bento, tmp_path_factory):
    """The Bento exported, imported into an empty BentoML home and served from there by an
    environment with only the core pins (not the project): its URL."""
    tmp = tmp_path_factory.mktemp("bento-serve")
    archive = tmp / "heimdall.bento"
    subprocess.run([*BENTOML, "export", str(bento.tag), str(archive)], check=True, capture_output=True)
    core = core_env()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env |= {"BENTOML_HOME": str(tmp / "empty-home"), "HEIMDALL_WORKERS": "1"}
    # From a directory without the sources, so only the Bento's copy can be served.
    no_project = subprocess.run([core / "python", "-c", "import heimdall"], cwd=tmp, capture_output=True)
    assert no_project.returncode != 0, "the core-pins environment must not have the project installed"
    subprocess.run([core / "bentoml", "import", str(archive)], check=True, capture_output=True, env=env)
    port = free_port()
    log = (tmp / "serve.log").open("w")
    server = subprocess.Popen(
        [core / "bentoml", "serve", str(bento.tag), "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: is_ready(f"{url}/readyz") or server.poll() is not None,
            90,
            "bentoml serve of the imported Bento",
        )
        assert server.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        yield url
    finally:
        stop_group(server)
        log.close()


@pytest.mark.slow
def test_exported_bento_serves_the_same_answer_from_an_empty_home(served_bento, model):
    payload = {**request_body(example_captures()), "use_cache": False}
    body = _post(f"{served_bento}/predict", payload)
    want = in_process_prediction(model)
    assert body["lat"] == pytest.approx(want["lat"], abs=POSITION_TOLERANCE_DEG)
    assert body["lon"] == pytest.approx(want["lon"], abs=POSITION_TOLERANCE_DEG)
    assert body["model_name"] == model.tag.name and body["model_version"] == model.tag.version
    with urllib.request.urlopen(f"{served_bento}/v1/model", timeout=10) as r:
        info = json.loads(r.read())["model"]
    assert info["registry_version"] == model.info.labels["registry_version"]
    assert info["contract_fingerprint"] == model.info.labels["contract_fingerprint"]


@pytest.mark.slow
def test_locustfile_smoke_run(served_bento, tmp_path):
    """5 users for 5 s through the real locustfile: it runs, names hits and misses, writes its summary."""
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(PROJECT_DIR / "load" / "locustfile.py"),
            "--headless",
            "--only-summary",
            "-u",
            "5",
            "-r",
            "5",
            "-t",
            "6s",
            "--host",
            served_bento,
            "--scenes",
            "20",
            "--warmup",
            "1",
            "--pairs-share",
            "0.5",
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    result = json.loads(summary.read_text())
    assert result["all"]["requests"] > 0, run.stderr[-2000:]
    assert result["all"]["failures"] == 0, run.stderr[-2000:]
    assert result["predictions"] > 0
    assert run.returncode == (0 if result["pass"] else 1)
    assert any(name.endswith((" hit", " miss")) for name in result["by_name"])
