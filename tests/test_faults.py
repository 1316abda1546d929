"""Faults at the edges of the service's life: start-up, import and shutdown.

Real components throughout: `bentoml serve` subprocesses on a private BentoML
home, models in its store, MLflow on SQLite with its local artifact store.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import psutil
import pytest
from mlflow import MlflowClient
from support import Serve, wait_until
from tiny_model import build_tiny_model

from heimdall.contract.servable import ModelNotServable
from heimdall.lifecycle.registry import RegistryError, import_model, register
from heimdall.training.examples import request_body
from heimdall.training.simulate import simulate_scenes


def _readyz(url: str) -> int | None:
    """/readyz's status, or None when nothing answers within half a second."""
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code
    except httpx.HTTPError:
        return None


def _never_ready_until(serve: Serve, done, what: str, timeout: float = 60) -> None:
    """Poll until done(log text); /readyz must not answer 200 meanwhile."""

    def check() -> bool:
        assert _readyz(serve.url) != 200, "reported ready"
        return done(serve.log.read_text())

    wait_until(check, timeout, what, interval=0.2)


def _broken_copy(reference_tag: str, version: str, file: str, content: bytes) -> str:
    """The reference model stored again as heimdall-broken:VERSION, with `file` replaced by `content`."""
    real = bentoml.models.get(reference_tag)
    tag = bentoml.Tag("heimdall-broken", version)
    with bentoml.models.create(tag, labels=real.info.labels, metadata=real.info.metadata) as model:
        for name in ("model.onnx", "contract.json"):
            shutil.copyfile(real.path_of(name), model.path_of(name))
        Path(model.path_of(file)).write_bytes(content)
    return str(tag)


# ---------------------------------------------------------------- start-up


@pytest.mark.slow
def test_unknown_model_tag_stops_serve_at_once(tmp_path):
    tag = "heimdall-localizer:never-imported"
    serve = Serve(tag, tmp_path / "serve.log", wait=False)
    try:
        _never_ready_until(serve, lambda _: serve.proc.poll() is not None, "bentoml serve exit")
        assert serve.proc.returncode == 1
        assert f"Model {tag} could not be found" in serve.log.read_text()
    finally:
        serve.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "HEIMDALL_MAX_BATCH_SIZE",
            "1",
            "invalid settings: HEIMDALL_MAX_BATCH_SIZE: Input should be greater than or equal to 2",
        ),
        (
            "HEIMDALL_REDIS_URL",
            "http://reader:s3cret@cache:6379",
            "invalid settings: HEIMDALL_REDIS_URL: expected redis://host:port/db, "
            "rediss://host:port/db (TLS) or unix:///path",
        ),
        (
            "HEIMDALL_REDIS_URL",
            "redis://:s3cret/x#y?z@127.0.0.1:6379/0",
            "percent-encoded ('/' as %2F, '#' as %23, '?' as %3F",
        ),
    ],
    ids=["max_batch_size", "redis_url", "redis_url_reserved_characters"],
)
def test_bad_setting_stops_serve_with_one_line(reference_tag, tmp_path, variable, value, message):
    serve = Serve(reference_tag, tmp_path / "serve.log", extra_env={variable: value}, wait=False)
    try:
        _never_ready_until(serve, lambda _: serve.proc.poll() is not None, "bentoml serve exit")
        assert serve.proc.returncode == 1
        log = serve.log.read_text()
        assert message in log
        assert "Traceback" not in log and "s3cret" not in log
    finally:
        serve.stop()


# fault -> (file replaced, its content from the reference contract, what the refusal says)
BROKEN = {
    "corrupt_graph": (
        "model.onnx",
        lambda contract: b"not an ONNX graph " * 64,
        "model: cannot read {path}/model.onnx as an ONNX graph: Error parsing message",
    ),
    "contract_not_json": (
        "contract.json",
        lambda contract: b'{"contract_version": 1,',
        "contract: cannot read {path}/contract.json: Expecting property name",
    ),
    "contract_version": (
        "contract.json",
        lambda contract: json.dumps({**contract, "contract_version": 99}).encode(),
        "contract_version: expected one of [1, 2], found 99",
    ),
    "contract_disagrees_with_graph": (
        "contract.json",
        lambda contract: json.dumps(
            {**contract, "features": {**contract["features"], "n_mels": 16}}
        ).encode(),
        "input 'features' shape: expected (batch, 7, 16, 31), found (batch, 7, 32, 31)",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", BROKEN)
def test_broken_model_is_named_and_never_ready(reference_tag, tmp_path, fault):
    file, content, problem = BROKEN[fault]
    contract = json.loads(Path(bentoml.models.get(reference_tag).path_of("contract.json")).read_text())
    tag = _broken_copy(reference_tag, fault.replace("_", "-"), file, content(contract))
    expected = f"{tag} cannot be served: " + problem.format(path=bentoml.models.get(tag).path)
    serve = Serve(tag, tmp_path / "serve.log", wait=False)
    try:
        _never_ready_until(serve, lambda log: expected in log, "the refusal in the log")
        # Outside a container BentoML's arbiter respawns the failed worker every 10 s:
        # the server stays up, unready, repeating the refusal.
        assert serve.proc.poll() is None
        assert _readyz(serve.url) != 200
    finally:
        serve.stop()


@pytest.mark.slow
def test_broken_model_stops_serve_in_an_image(reference_tag, tmp_path):
    """The generated Dockerfile sets BENTOML_CONTAINERIZED: no respawn, serve exits 1 for the
    orchestrator to see (at BentoML's next 10 s arbiter check)."""
    tag = _broken_copy(reference_tag, "image-corrupt-graph", "model.onnx", b"not an ONNX graph " * 64)
    serve = Serve(tag, tmp_path / "serve.log", extra_env={"BENTOML_CONTAINERIZED": "true"}, wait=False)
    try:
        _never_ready_until(serve, lambda _: serve.proc.poll() is not None, "bentoml serve exit", timeout=40)
        assert serve.proc.returncode == 1
        assert f"{tag} cannot be served: model: cannot read" in serve.log.read_text()
    finally:
        serve.stop()


# ---------------------------------------------------------------- import


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _remove_graph(artifacts: Path) -> None:
    (artifacts / "model.onnx").unlink()


def _corrupt_graph(artifacts: Path) -> None:
    (artifacts / "model.onnx").write_bytes(b"not an ONNX graph " * 64)


def _corrupt_contract(artifacts: Path) -> None:
    (artifacts / "extra_files" / "contract.json").write_text('{"contract_version": 1,')


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (shutil.rmtree, RegistryError, "MLflow: No such artifact: 'MLmodel'"),
        (_remove_graph, ModelNotServable, "cannot be served: model: cannot read"),
        (_corrupt_graph, ModelNotServable, "as an ONNX graph: Error parsing message"),
        (_corrupt_contract, ModelNotServable, "cannot be served: contract: cannot read"),
    ],
    ids=["artifacts_missing", "graph_missing", "graph_corrupt", "contract_corrupt"],
)
def test_failed_import_leaves_nothing_in_the_store(tiny, tmp_path, damage, error, message):
    """The registry version's artifacts are damaged on disk; the download or the checks fail."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = f"heimdall-fault-{uuid.uuid4().hex[:8]}"
    register(tiny, name=name, tracking_uri=tracking)
    artifacts = MlflowClient(tracking, tracking).get_model_version_download_uri(name, "1")
    damage(Path(artifacts.removeprefix("file://")))
    with pytest.raises(error, match=message):
        import_model(f"models:/{name}@production", tracking_uri=tracking)
    assert name not in {m.tag.name for m in bentoml.models.list()}


# ---------------------------------------------------------------- shutdown

BURST = 48
SAMPLES = 131_072  # per receiver in the burst's bodies: twice the default limit, raised for the test
JSON = {"content-type": "application/json"}


def _predict_counts(url: str) -> tuple[float, float]:
    """(/predict requests in progress, /predict requests answered) from the service's metrics."""
    in_progress = answered = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith('heimdall_requests_in_progress{endpoint="/predict"'):
            in_progress += float(line.split()[-1])
        elif line.startswith('heimdall_requests_total{endpoint="/predict",'):
            answered += float(line.split()[-1])
    return in_progress, answered


def _all_accepted(url: str) -> tuple[float, float] | None:
    """The counts once every request of the burst is in progress or answered, none in a backlog."""
    counts = _predict_counts(url)
    return counts if sum(counts) >= BURST else None


def _listening_workers(serve: Serve) -> int:
    """Worker processes that still listen on the service port (the arbiter is not counted)."""
    count = 0
    for worker in psutil.Process(serve.proc.pid).children(recursive=True):
        try:
            sockets = worker.net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        count += any(s.status == psutil.CONN_LISTEN and s.laddr.port == serve.port for s in sockets)
    return count


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_takes_no_new_ones(reference_tag, tmp_path):
    # Two workers (the default); a generous batcher budget and in-flight cap, so a 503 here could
    # only come from shutdown, and room for bodies of the largest captures.
    serve = Serve(
        reference_tag,
        tmp_path / "serve.log",
        extra_env={
            "HEIMDALL_WORKERS": "2",
            "HEIMDALL_MAX_LATENCY_MS": "20000",
            "HEIMDALL_MAX_BODY_BYTES": "16777216",
            "HEIMDALL_MAX_IN_FLIGHT": str(BURST),
            "HEIMDALL_MAX_SAMPLES": str(SAMPLES),
        },
    )
    # Requests that take a while, so the burst is still in flight at the signal and after:
    # JSON lists of the largest accepted captures from the most receivers a scene has,
    # ~120 ms each of parsing on a worker's event loop.
    scenes = simulate_scenes(8, seed=31)
    captures = max((scenes.capture_set(i) for i in range(len(scenes))), key=len)
    big = {s: np.tile(iq, SAMPLES * 2 // iq.size) for s, iq in captures.items()}
    body = json.dumps({**request_body(big, "pairs"), "use_cache": False}).encode()

    def timed() -> tuple[int | str, float]:
        try:
            r = httpx.post(f"{serve.url}/predict", content=body, headers=JSON, timeout=60)
            status: int | str = r.status_code
        except httpx.TransportError as exc:
            status = f"{type(exc).__name__}: {exc}"
        return status, time.monotonic()

    try:
        with ThreadPoolExecutor(BURST + 1) as pool:
            burst = [pool.submit(timed) for _ in range(BURST)]
            # Every request accepted by a worker (in progress or answered), none still in a backlog.
            counts = wait_until(lambda: _all_accepted(serve.url), 30, "the burst accepted")
            signalled = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)  # the group leader only, as a container runtime does
            wait_until(lambda: _listening_workers(serve) == 0, 10, "workers to stop listening", interval=0.02)
            late_status, _ = timed()
            late_refused = time.monotonic()
            answers = [future.result() for future in burst]
            exit_code = serve.proc.wait(timeout=30)
            exited = time.monotonic()
        assert counts[0] > 0, "no request was in flight at the signal"
        assert [status for status, _ in answers] == [200] * BURST
        assert any(done > signalled for _, done in answers), "every answer came before the signal"
        assert exit_code == 0 and exited - signalled < 30
        # A connection made during the drain is refused at once, not parked in the backlog
        # until the drain ends: it is refused before the last in-flight request is answered.
        assert late_status.startswith("ConnectError") and "refused" in late_status, late_status
        assert late_refused < max(done for _, done in answers)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{serve.url}/readyz", timeout=2)
    finally:
        serve.stop()
