"""The release image for real: the Bento containerized on the local Debian base image, run with
the container engine, asked the example capture set and compared with the in-process answer;
then deploy/kubernetes played with `podman kube play`.

Slow: a first build takes minutes (later ones reuse the engine's layer cache). Skipped, with the
reason, only where no container engine can run the base image; `make base-image` sets up podman
and builds the base here, and .ci/run sets HEIMDALL_TEST_IMAGE=required so CI cannot skip it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from expected import in_process_prediction
from support import POSITION_TOLERANCE_DEG, free_port, is_ready, wait_until

from heimdall.lifecycle.release import (
    BASE_IMAGE_ENV,
    PROJECT_DIR,
    build_bento,
    container_engine,
    containerize,
)
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
    there: BentoML needs it). The registry client is (mlflow-skinny: a running service follows an
    alias), the MLflow server stack is not: its SQL store, migrations and web server."""
    probe = (
        "import importlib.util as u; "
        "print(*[m for m in ('sqlalchemy', 'alembic', 'flask', 'torch', 'matplotlib', "
        "'heimdall.lifecycle', 'heimdall.training') if u.find_spec(m)])"
    )
    run = [engine, "run", "--rm", "--workdir", "/home/bentoml/bento/src", "--entrypoint", "python"]
    found = subprocess.run([*run, image, "-c", probe], check=True, capture_output=True, text=True)
    assert found.stdout.split() == []


KUBERNETES = PROJECT_DIR / "deploy" / "kubernetes"
REDIS_IMAGE = "localhost/heimdall-redis:bookworm"
POD_IP = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"


def _manifests(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERNETES / name).read_text()))


def _one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return copy.deepcopy(doc)


class KubePlay:
    """`<engine> kube play` of manifests written to `workdir`; `down()` removes all it played and
    the secrets it made."""

    def __init__(self, engine: str, workdir: Path) -> None:
        self.engine, self.workdir = engine, workdir
        self.played: list[Path] = []
        self.secrets: list[str] = []

    def play(self, name: str, *docs: dict) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.played.append(path)
        played = subprocess.run([self.engine, "kube", "play", str(path)], capture_output=True, text=True)
        assert played.returncode == 0, f"kube play {name}: {played.stderr[-2000:]}"

    def secret(self, doc: dict) -> None:
        """The Secret `doc` as a podman secret. podman 4.3 plays a Secret document but stores it
        in a form its own secretKeyRef cannot read ("not valid JSON"); what it reads is a JSON
        map of each key to its base64 value, created here from the document's stringData."""
        name = doc["metadata"]["name"]
        values = {k: base64.b64encode(v.encode()).decode() for k, v in doc["stringData"].items()}
        subprocess.run(
            [self.engine, "secret", "create", name, "-"], input=json.dumps(values), text=True, check=True
        )
        self.secrets.append(name)

    def pod_ip(self, deployment: str) -> str:
        infra = subprocess.run(
            [self.engine, "pod", "inspect", "--format", "{{.InfraContainerID}}", f"{deployment}-pod-0"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return subprocess.run(
            [self.engine, "inspect", "--format", POD_IP, infra],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def logs(self, deployment: str, container: str) -> str:
        out = subprocess.run(
            [self.engine, "logs", f"{deployment}-pod-0-{container}"], capture_output=True, text=True
        )
        return (out.stdout + out.stderr)[-3000:]

    def down(self) -> None:
        for path in reversed(self.played):
            subprocess.run([self.engine, "kube", "down", str(path)], capture_output=True)
        for name in self.secrets:
            subprocess.run([self.engine, "secret", "rm", name], capture_output=True)


def _publish_on_loopback(deployment: dict) -> int:
    """Publish the container's port on a free loopback port: podman publishes every containerPort
    on the host, by default on the same port number (6379 and 3000 may be taken here)."""
    port = free_port()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container["ports"][0] |= {"hostPort": port, "hostIP": "127.0.0.1"}
    return port


@pytest.fixture
def kube(engine, tmp_path) -> Iterator[KubePlay]:
    play = KubePlay(engine, tmp_path)
    yield play
    play.down()


def test_kube_play_two_instances_share_one_redis(engine, image, kube):
    """deploy/kubernetes played with podman: Redis, the Secret, and the service's Deployment
    twice under two names, one replica each. A capture answered by one
    instance is a cache hit on the other. Services, the HPA and the PDB do not run under podman;
    the Secret points at the Redis pod's address, which a cluster's Service name would give."""
    subprocess.run([engine, "build", "--tag", REDIS_IMAGE, str(PROJECT_DIR / "deploy" / "redis")], check=True)
    run = uuid.uuid4().hex[:6]
    redis = _one(_manifests("redis.yaml"), "Deployment")
    redis["metadata"]["name"] = f"heimdall-redis-{run}"
    _publish_on_loopback(redis)
    kube.play("redis", redis)
    secret = _one(_manifests("secret.yaml"), "Secret")
    secret["metadata"]["name"] = f"heimdall-redis-{run}"
    secret["stringData"]["url"] = f"redis://{kube.pod_ip(redis['metadata']['name'])}:6379/0"
    kube.secret(secret)

    urls = {}
    for instance in ("a", "b"):
        deployment = _one(_manifests("heimdall.yaml"), "Deployment")
        deployment["metadata"]["name"] = f"heimdall-{instance}-{run}"
        # podman starts every replica as a pod of its own, on the same host port: one each here.
        deployment["spec"]["replicas"] = 1
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container["image"] = image
        container["env"][1]["valueFrom"]["secretKeyRef"]["name"] = secret["metadata"]["name"]
        port = _publish_on_loopback(deployment)
        kube.play(f"heimdall-{instance}", deployment)
        urls[deployment["metadata"]["name"]] = f"http://127.0.0.1:{port}"
    for name, url in urls.items():
        wait_until(lambda url=url: is_ready(f"{url}/readyz"), 180, f"{name} under kube play")

    first, second = urls.values()
    body = request_body(example_captures())
    answers = [httpx.post(f"{url}/predict", json=body, timeout=30) for url in (first, second)]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [a.json()["cached"] for a in answers] == [False, True], kube.logs(next(iter(urls)), "heimdall")
    assert answers[1].json()["lat"] == answers[0].json()["lat"]
