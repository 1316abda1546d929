"""A running service follows a registry alias: promotion, rollback, refusals, admin routes.

Real components: an `mlflow server` (SQLite backend) holds the versions, `bentoml serve`
follows `models:/NAME@production`, and the aliases are moved as an ML engineer moves
them (`heimdall alias`). The tiny test models answer differently per version (v2 is v1
with its position weights doubled), so every answer shows which version made it.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support import Serve, free_port, wait_until
from tiny_model import build_incompatible_model, build_tiny_model

from heimdall.lifecycle.cli import main
from heimdall.lifecycle.registry import import_model, register
from heimdall.training.examples import example_captures, request_body

pytestmark = pytest.mark.slow
TOKEN = "lifecycle-test-token-" + uuid.uuid4().hex


def _nan_weights(out_dir: Path) -> Path:
    """A graph that loads and matches its contract but answers NaN: corrupt weights."""
    build_tiny_model(out_dir)
    model = onnx.load(out_dir / "model.onnx")
    for init in model.graph.initializer:
        if init.name == "w_mean":
            nan = np.full_like(numpy_helper.to_array(init), np.nan)
            init.CopyFrom(numpy_helper.from_array(nan, init.name))
    onnx.save_model(model, out_dir / "model.onnx")
    return out_dir


@pytest.fixture(scope="module")
def registry(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Versions 1 and 2 (good), 3 (incompatible contract), 4 (NaN weights) of one model; production -> 1."""
    root = tmp_path_factory.mktemp("lifecycle-models")
    name = f"heimdall-lc-{uuid.uuid4().hex[:8]}"
    dirs = [
        build_tiny_model(root / "v1"),
        build_tiny_model(root / "v2", scale=2.0),
        build_incompatible_model(root / "v3", "input_shape"),
        _nan_weights(root / "v4"),
    ]
    for model_dir in dirs:
        register(model_dir, name=name, alias="staging", tracking_uri=mlflow_server)
    register(dirs[0], name=name, alias="production", tracking_uri=mlflow_server)
    tag = str(import_model(f"models:/{name}/1", tracking_uri=mlflow_server).tag)
    return {"name": name, "tag": tag, "tracking": mlflow_server}


def _alias(registry: dict[str, str], version: int, alias: str = "production") -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", registry["tracking"])
        assert main(["alias", registry["name"], alias, str(version)]) == 0


def _serve(registry: dict[str, str], log: Path, **env: str) -> Serve:
    return Serve(
        registry["tag"],
        log,
        extra_env={
            "MLFLOW_TRACKING_URI": registry["tracking"],
            "HEIMDALL_MODEL_URI": f"models:/{registry['name']}@production",
            **env,
        },
    )


def _body(i: int) -> dict:
    """The example capture set, made distinct per `i` (its own cache key)."""
    return request_body({s: iq + np.int16(i % 1000) for s, iq in example_captures().items()})


def _registry_version(serve: Serve) -> str:
    return httpx.get(f"{serve.url}/v1/model", timeout=10).json()["model"]["registry_version"]


def _metric(serve: Serve, name: str, **labels: str) -> float:
    text = httpx.get(f"{serve.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Traffic:
    """Clients posting distinct capture sets until stopped; every status and answering version kept."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.stop = url, threading.Event()
        self.answers: list[tuple[int, str]] = []  # (status, model_version or the body)
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, client: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = client
            while not self.stop.is_set():
                r = http.post(f"{self.url}/predict", json={**_body(i), "use_cache": False})
                self.answers.append((r.status_code, r.json()["model_version"] if r.is_success else r.text))
                i += 7

    def seen(self, version_prefix: str) -> bool:
        return any(v.startswith(version_prefix) for _, v in self.answers[-20:])

    def finish(self) -> list[tuple[int, str]]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.answers


@pytest.fixture(scope="module")
def follower(registry, shared_redis_url, tmp_path_factory) -> Iterator[Serve]:
    """One worker following production every 0.5 s, caching in Redis; no admin token."""
    log = tmp_path_factory.mktemp("follow") / "serve.log"
    serve = _serve(registry, log, HEIMDALL_REGISTRY_POLL_S="0.5", HEIMDALL_REDIS_URL=shared_redis_url)
    yield serve
    serve.stop()


def test_promotion_and_rollback_under_load_fail_no_request(registry, follower):
    assert _registry_version(follower) == "1"
    swaps = _metric(follower, "heimdall_model_swaps_total", role="primary")
    traffic = Traffic(follower.url)
    try:
        wait_until(lambda: len(traffic.answers) > 20, 60, "traffic on version 1")
        _alias(registry, 2)
        wait_until(lambda: traffic.seen("v2-"), 60, "answers from version 2")
        assert _registry_version(follower) == "2"
        _alias(registry, 1)  # roll back
        wait_until(lambda: traffic.seen("v1-"), 60, "answers from version 1 again")
    finally:
        answers = traffic.finish()
    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: len(answers)}, [a for a in answers if a[0] != 200][:3]
    versions = [v.split("-")[0] for _, v in answers]
    # one version after the other: v1 until the promotion, v2, then v1 again (requests of several
    # clients interleave around each swap, so a few answers either side of it may still be the old one)
    assert versions[0] == "v1" and versions[-1] == "v1" and "v2" in versions
    assert _metric(follower, "heimdall_model_swaps_total", role="primary") == swaps + 2
    assert _registry_version(follower) == "1"


def test_no_answer_crosses_versions_through_the_cache(registry, follower):
    body = _body(1000)
    first = follower.predict(body).json()
    again = follower.predict(body).json()
    assert again["cached"] and again["model_version"] == first["model_version"]
    _alias(registry, 2)
    wait_until(lambda: _registry_version(follower) == "2", 60, "promotion to version 2")
    on_v2 = follower.predict(body).json()
    assert not on_v2["cached"] and on_v2["model_version"].startswith("v2-")
    # v2 is v1 with doubled position weights: its own answer, not v1's from the cache
    assert on_v2["east_m"] == pytest.approx(2 * first["east_m"], rel=1e-4)
    _alias(registry, 1)
    wait_until(lambda: _registry_version(follower) == "1", 60, "rollback to version 1")
    back = follower.predict(body).json()  # v1's namespace again: its entry is still in Redis
    assert back["cached"] and back["model_version"] == first["model_version"]
    assert back["east_m"] == first["east_m"]


@pytest.mark.parametrize(
    ("version", "reason"),
    [(3, r"input 'features' shape: expected \(batch, 7, 32, 31\)"), (4, "warm-up inference gave an invalid")],
    ids=["incompatible_contract", "corrupt_weights"],
)
def test_broken_version_is_refused_and_the_old_keeps_serving(registry, follower, version, reason):
    refusals = _metric(follower, "heimdall_model_refusals_total", role="primary")
    _alias(registry, version)
    try:
        wait_until(
            lambda: _metric(follower, "heimdall_model_refusals_total", role="primary") > refusals,
            60,
            f"refusal of version {version}",
        )
        answer = follower.predict(_body(2000 + version))
        assert answer.status_code == 200 and answer.json()["model_version"].startswith("v1-")
        info = httpx.get(f"{follower.url}/v1/model", timeout=10).json()
        assert info["model"]["registry_version"] == "1"
        refusal = info["registry"]["last_refusal"]
        assert refusal["registry_version"] == str(version) and re.search(reason, refusal["reason"])
        lines = [ln for ln in follower.log.read_text().splitlines() if f"(version {version})" in ln]
        assert len(lines) == 1 and "refused primary" in lines[0] and "Traceback" not in lines[0], lines
        time.sleep(2)  # four polls: refused once, not again at each while the alias stays there
        assert _metric(follower, "heimdall_model_refusals_total", role="primary") == refusals + 1
    finally:
        _alias(registry, 1)


def test_admin_routes_are_off_without_a_token(follower):
    r = httpx.post(f"{follower.url}/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404 and r.json()["reason"] == "off"


@pytest.fixture(scope="module")
def admin(registry, tmp_path_factory) -> Iterator[Serve]:
    """Two workers that never poll on their own: only POST /v1/admin/reload moves them."""
    log = tmp_path_factory.mktemp("admin") / "serve.log"
    serve = _serve(
        registry, log, HEIMDALL_REGISTRY_POLL_S="86400", HEIMDALL_ADMIN_TOKEN=TOKEN, HEIMDALL_WORKERS="2"
    )
    # /readyz answers once one worker is up; a worker starting later would resolve the alias then
    wait_until(lambda: len(_workers(serve)) == 2, 60, "both workers up")
    yield serve
    serve.stop()


def _workers(serve: Serve) -> dict[int, str]:
    """Worker pid -> its primary's registry version, from the workers 20 fresh connections reached."""
    seen = {}
    for _ in range(20):
        info = httpx.get(f"{serve.url}/v1/model", timeout=10).json()
        seen[info["worker_pid"]] = info["model"]["registry_version"]
    return seen


def test_admin_reload_needs_the_token_and_moves_every_worker(registry, admin):
    url = f"{admin.url}/v1/admin/reload"
    missing = httpx.post(url)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
    assert wrong.status_code == 403 and wrong.json()["reason"] == "forbidden"
    basic = httpx.post(url, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    for refused in (missing, wrong, basic):
        assert TOKEN not in refused.text
    _alias(registry, 2)
    try:
        assert set(_workers(admin).values()) == {"1"}  # nobody polls
        ok = httpx.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert ok.json()["models"][0]["registry_version"] == "2"

        # the other worker checks within its signal tick
        def both_moved() -> bool:
            seen = _workers(admin)
            return len(seen) == 2 and set(seen.values()) == {"2"}

        wait_until(both_moved, 30, "both workers on version 2")
        info = httpx.get(f"{admin.url}/v1/model", timeout=10).text
        assert TOKEN not in info and TOKEN not in admin.log.read_text()
    finally:
        _alias(registry, 1)


# ---------------------------------------------------------------- candidate: canary and shadow

SHARE = 0.3


def _candidate(registry, tmp_path_factory, mode: str) -> Iterator[Serve]:
    _alias(registry, 2, "candidate")
    log = tmp_path_factory.mktemp(mode) / "serve.log"
    serve = _serve(
        registry,
        log,
        HEIMDALL_CANDIDATE_URI=f"models:/{registry['name']}@candidate",
        HEIMDALL_CANDIDATE_MODE=mode,
        HEIMDALL_CANDIDATE_SHARE=str(SHARE),
    )
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def canary(registry, tmp_path_factory) -> Iterator[Serve]:
    yield from _candidate(registry, tmp_path_factory, "canary")


@pytest.fixture(scope="module")
def shadow(registry, tmp_path_factory) -> Iterator[Serve]:
    yield from _candidate(registry, tmp_path_factory, "shadow")


def _version(serve: Serve, body: dict, **headers: str) -> str:
    r = httpx.post(f"{serve.url}/predict", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["model_version"].split("-")[0]


def test_canary_splits_clients_near_the_share_and_keeps_each_on_one_version(canary):
    info = httpx.get(f"{canary.url}/v1/model", timeout=10).json()
    roles = [(m["role"], m["registry_version"]) for m in info["models"]]
    assert roles == [("primary", "1"), ("candidate", "2")]
    assert info["candidate"] == {"mode": "canary", "share": SHARE}
    clients = 400
    first = {i: _version(canary, _body(i), **{"Heimdall-Client-Key": f"client-{i}"}) for i in range(clients)}
    share = sum(v == "v2" for v in first.values()) / clients
    # 400 keys: one standard deviation of the share is 2.3 points; the split is a hash, not a draw
    assert abs(share - SHARE) < 0.07, share
    for i in range(0, clients, 8):  # the same client with another capture set: the same version
        assert _version(canary, _body(i + 500), **{"Heimdall-Client-Key": f"client-{i}"}) == first[i]
    # no key: the capture set decides, the same one always the same way
    assert len({_version(canary, _body(77)) for _ in range(5)}) == 1
    predicted = _metric(canary, "heimdall_model_predictions_total", role="candidate")
    assert predicted >= sum(v == "v2" for v in first.values())


def test_a_request_may_pin_a_loaded_version(canary):
    body = _body(3)
    assert _version(canary, body, **{"Heimdall-Model-Version": "2"}) == "v2"
    assert _version(canary, body, **{"Heimdall-Model-Version": "1"}) == "v1"
    r = httpx.post(f"{canary.url}/predict", json=body, headers={"Heimdall-Model-Version": "9"}, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "Heimdall-Model-Version", r.text


def test_shadow_never_changes_the_primary_answer_and_records_disagreement(registry, canary, shadow):
    bodies = [_body(3000 + i) for i in range(40)]
    pin = {"Heimdall-Model-Version": "1"}
    pinned = [httpx.post(f"{canary.url}/predict", json=b, headers=pin, timeout=30).json() for b in bodies]
    before = _metric(shadow, "heimdall_shadow_distance_km_count")
    answers = [shadow.predict(b).json() for b in bodies]
    assert {a["model_version"] for a in answers} == {pinned[0]["model_version"]}
    for got, want in zip(answers, pinned, strict=True):
        assert (got["east_m"], got["north_m"]) == (want["east_m"], want["north_m"])

    def compared() -> bool:
        return _metric(shadow, "heimdall_shadow_distance_km_count") == before + len(bodies)

    wait_until(compared, 30, "the shadow comparisons")
    # v2 places every transmitter at twice v1's offset from the reference point, so the two
    # answers are |v1's offset| apart
    expected_km = sum(np.hypot(a["east_m"], a["north_m"]) / 1e3 for a in answers)
    assert _metric(shadow, "heimdall_shadow_distance_km_sum") == pytest.approx(expected_km, rel=1e-3)
    for ellipse in ("primary", "candidate"):
        count = _metric(shadow, "heimdall_shadow_ellipse_level_count", ellipse=ellipse)
        assert count == len(bodies)


def test_registry_down_keeps_serving_and_says_so_once(registry, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    serve = Serve(
        registry["tag"],
        tmp_path / "serve.log",
        extra_env={
            "MLFLOW_TRACKING_URI": dead,
            "HEIMDALL_MODEL_URI": f"models:/{registry['name']}@production",
            "HEIMDALL_REGISTRY_POLL_S": "0.5",
        },
    )
    try:
        wait_until(lambda: _metric(serve, "heimdall_registry_errors_total") >= 3, 60, "three failed checks")
        r = serve.predict(_body(1))
        assert r.status_code == 200 and r.json()["model_version"] == registry["tag"].split(":")[1]
        info = httpx.get(f"{serve.url}/v1/model", timeout=10).json()
        assert info["registry"]["reachable"] is False
        lines = [ln for ln in serve.log.read_text().splitlines() if "unreachable" in ln]
        assert len(lines) == 1 and dead in lines[0], lines
    finally:
        serve.stop()
