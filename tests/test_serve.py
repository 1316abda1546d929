"""The service as operators run it: a real `bentoml serve` subprocess and a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import pytest
from support import POSITION_TOLERANCE_DEG, RedisServer, Serve, wait_until

from heimdall.training.examples import request_body
from heimdall.training.simulate import simulate_scenes

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_and_service(reference_tag, tmp_path) -> Iterator[tuple[RedisServer, Serve]]:
    redis = RedisServer(tmp_path)
    redis.start()
    serve = Serve(reference_tag, tmp_path / "serve.log", redis.url)
    yield redis, serve
    serve.stop()
    redis.stop()


def _batch_sizes(metrics: str) -> tuple[float, float]:
    """(count, sum) of the adaptive batch size histogram."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and not line.startswith("#"):
            name = line.split("{")[0].rsplit("_", 1)[-1]
            if name in ("count", "sum"):
                values[name] = values.get(name, 0.0) + float(line.split()[-1])
    return values.get("count", 0.0), values.get("sum", 0.0)


def test_concurrent_requests_are_batched_and_each_gets_its_answer(redis_and_service):
    _, serve = redis_and_service
    scenes = simulate_scenes(48, seed=4242)
    bodies = [request_body(scenes.capture_set(i)) for i in range(len(scenes))]
    solo = [serve.predict(b, use_cache=False).json() for b in bodies[:6]]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda b: serve.predict(b, use_cache=False), bodies))
    refused = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
    assert not refused, (refused, serve.log.read_text()[-3000:])
    for a, b in zip(solo, answers[:6], strict=True):
        assert (a["lat"], a["lon"]) == pytest.approx(
            (b.json()["lat"], b.json()["lon"]), abs=POSITION_TOLERANCE_DEG
        )
    # The items of a batch request run concurrently too: 48 rows reach the model together,
    # whatever concurrency this test's client threads manage to produce.
    batch = httpx.post(
        f"{serve.url}/predict/batch", json={"items": bodies, "use_cache": False}, timeout=60
    ).json()
    assert batch["succeeded"] == len(bodies)
    for i, item in enumerate(batch["items"][:6]):
        got = (item["prediction"]["lat"], item["prediction"]["lon"])
        assert got == pytest.approx((solo[i]["lat"], solo[i]["lon"]), abs=POSITION_TOLERANCE_DEG)
    count, total = _batch_sizes(httpx.get(f"{serve.url}/metrics").text)
    assert count > 0 and total / count > 1.0, f"mean adaptive batch size {total}/{count}"
    # The README's Python client: BentoML's own client, base64 body
    with bentoml.SyncHTTPClient(serve.url) as client:
        answer = client.predict(**bodies[0], use_cache=False)
    assert (answer["lat"], answer["lon"]) == pytest.approx(
        (solo[0]["lat"], solo[0]["lon"]), abs=POSITION_TOLERANCE_DEG
    )
    metrics = httpx.get(f"{serve.url}/metrics").text
    for name in (
        "heimdall_preprocess_seconds_count",
        "heimdall_inference_seconds_count",
        'heimdall_cache_requests_total{outcome="bypass"}',
        'heimdall_requests_total{endpoint="/predict",status="200"}',
        'heimdall_request_seconds_count{endpoint="/predict/batch"}',
    ):
        assert name in metrics


def test_cache_survives_redis_going_away_and_coming_back(redis_and_service):
    redis, serve = redis_and_service
    scenes = simulate_scenes(4, seed=77)
    first = request_body(scenes.capture_set(0))
    assert serve.predict(first).json()["cached"] is False
    assert serve.predict(first).json()["cached"] is True

    redis.stop()
    start = time.perf_counter()
    down = [serve.predict(request_body(scenes.capture_set(i))) for i in (1, 2, 1)]
    elapsed = time.perf_counter() - start
    assert [r.status_code for r in down] == [200, 200, 200]
    assert not any(r.json()["cached"] for r in down)
    assert elapsed < 5, f"requests waited on the dead Redis: {elapsed:.1f} s"
    assert httpx.get(f"{serve.url}/readyz").status_code == 200
    info = httpx.get(f"{serve.url}/v1/model").json()
    assert info["cache"]["up"] is False

    redis.start()  # same port, empty
    time.sleep(1.5)  # the circuit retries after HEIMDALL_CACHE_RETRY_S=1

    def caching_again() -> bool:
        body = request_body(scenes.capture_set(3))
        return serve.predict(body).status_code == 200 and serve.predict(body).json()["cached"]

    wait_until(caching_again, 10, "caching after Redis returned", interval=0.5)
    log = serve.log.read_text()
    assert log.count("serving uncached") == 1, "one log line per outage"
