"""Shared fixtures: a private BentoML home, real Redis servers, models imported through MLflow."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# BentoML reads its home when first imported: point it at a throwaway store
# before any test module imports bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="heimdall-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

REFERENCE_MODEL = Path(os.environ.get("HEIMDALL_TEST_MODEL_DIR", Path(__file__).resolve().parents[1] / "heimdall" / "reference"))
SHARED_REDIS = os.environ.get("HEIMDALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


class RedisServer:
    """A private redis-server on a free loopback port, so tests can stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_redis_url() -> str:
    import redis

    client = redis.Redis.from_url(SHARED_REDIS, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"tests need Redis at {SHARED_REDIS} ({exc}); .ci/run starts one")
    return SHARED_REDIS


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def reference_tag(mlflow_sqlite) -> str:
    """The committed reference model, registered in MLflow and imported into the BentoML store."""
    from heimdall.registry import import_model, register

    register(REFERENCE_MODEL, name="heimdall-localizer", alias="production", tracking_uri=mlflow_sqlite)
    model = import_model("models:/heimdall-localizer@production", tracking_uri=mlflow_sqlite)
    return str(model.tag)
