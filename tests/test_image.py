"""The release image for real: the Bento containerized on the local Debian base image, run with
the container engine, asked the example capture set and compared with the in-process answer.

Slow: a first build takes minutes (later ones reuse the engine's layer cache). Skipped, with the
reason, only where no container engine can run the base image; `make base-image` sets up podman
and builds the base here, and .ci/run sets HEIMDALL_TEST_IMAGE=required so CI cannot skip it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from expected import in_process_prediction
from support import POSITION_TOLERANCE_DEG, free_port, is_ready, wait_until

from heimdall.lifecycle.release import BASE_IMAGE_ENV, build_bento, container_engine, containerize
from heimdall.training.examples import example_captures, request_body

pytestmark = pytest.mark.slow

BASE_IMAGE = os.environ.get(BASE_IMAGE_ENV, "localhost/heimdall-base:bookworm")


@pytest.fixture(scope="module")
def engine() -> str:
    found = container_engine(BASE_IMAGE)
    if found is None:
        reason = (
            f"no container engine (docker, podman) can run {BASE_IMAGE} here; "
            "`make base-image` installs podman and builds it"
        )
        if os.environ.get("HEIMDALL_TEST_IMAGE") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def model(reference_tag):
    import bentoml

    return bentoml.models.get(reference_tag)


@pytest.fixture(scope="module")
def image(engine, model) -> str:
    bento, _ = build_bento(model, base_image=BASE_IMAGE)
    return containerize(str(bento.tag), engine)


@pytest.fixture(scope="module")
def container(engine, image) -> Iterator[str]:
    """The image running with one worker, published on a loopback port: its URL."""
    port = free_port()
    run = [engine, "run", "--detach", "--publish", f"127.0.0.1:{port}:3000", "--env", "HEIMDALL_WORKERS=1"]
    container_id = subprocess.run([*run, image], check=True, capture_output=True, text=True).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: is_ready(f"{url}/readyz") or not _running(engine, container_id), 180, image)
        logs = subprocess.run([engine, "logs", container_id], capture_output=True, text=True)
        assert _running(engine, container_id), (logs.stdout + logs.stderr)[-3000:]
        yield url
    finally:
        subprocess.run([engine, "rm", "--force", container_id], check=True, capture_output=True)


def _running(engine: str, container_id: str) -> bool:
    state = subprocess.run(
        [engine, "inspect", "--format", "{{.State.Running}}", container_id], capture_output=True, text=True
    )
    return state.stdout.strip() == "true"


def test_the_image_answers_the_example_as_the_model_does_in_process(container, model):
    body = {**request_body(example_captures()), "use_cache": False}
    response = httpx.post(f"{container}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    got, want = response.json(), in_process_prediction(model)
    assert got["lat"] == pytest.approx(want["lat"], abs=POSITION_TOLERANCE_DEG)
    assert got["lon"] == pytest.approx(want["lon"], abs=POSITION_TOLERANCE_DEG)
    assert got["model_name"] == model.tag.name and got["model_version"] == model.tag.version
    assert httpx.get(f"{container}/livez", timeout=5).status_code == 200


def test_the_image_holds_the_service_only(engine, image):
    """No lifecycle or training code and none of their own dependencies in the image (rich is
    there: BentoML needs it)."""
    probe = (
        "import importlib.util as u; "
        "print(*[m for m in ('mlflow', 'torch', 'matplotlib', 'heimdall.lifecycle', 'heimdall.training') "
        "if u.find_spec(m)])"
    )
    run = [engine, "run", "--rm", "--workdir", "/home/bentoml/bento/src", "--entrypoint", "python"]
    found = subprocess.run([*run, image, "-c", probe], check=True, capture_output=True, text=True)
    assert found.stdout.split() == []
