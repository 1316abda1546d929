"""Shared fixtures: a private BentoML home, real Redis servers, models imported through MLflow."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support import RedisServer, free_port, stop_group

# BentoML reads its home when first imported: point it at a throwaway store
# before any test module imports bentoml.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="heimdall-bentoml-")
atexit.register(shutil.rmtree, os.environ["BENTOML_HOME"], ignore_errors=True)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

# Property-based tests: the same examples on every run (CI is repeatable), no example
# database left in the work tree, no per-example deadline on a shared 2-core machine.
settings.register_profile("heimdall", derandomize=True, database=None, deadline=None)
settings.load_profile("heimdall")

REFERENCE_MODEL = Path(
    os.environ.get("HEIMDALL_TEST_MODEL_DIR", Path(__file__).resolve().parents[1] / "heimdall" / "reference")
)
SHARED_REDIS = os.environ.get("HEIMDALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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
    from heimdall.lifecycle.registry import import_model, register

    register(REFERENCE_MODEL, name="heimdall-localizer", alias="production", tracking_uri=mlflow_sqlite)
    model = import_model("models:/heimdall-localizer@production", tracking_uri=mlflow_sqlite)
    return str(model.tag)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on loopback: SQLite backend, proxied artifacts in a temp directory."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.25)
        yield uri
    finally:
        stop_group(server, timeout=15)  # the server and the uvicorn worker it started
        log.close()
