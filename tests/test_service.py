"""The service through BentoML's in-process ASGI app, against a real Redis."""

from __future__ import annotations

import base64
import importlib
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient
from support import POSITION_TOLERANCE_DEG

from heimdall.contract.document import Contract
from heimdall.contract.features import FeatureExtractor, iq_from_int16
from heimdall.serving.inference import ModelOutput, OnnxModel
from heimdall.serving.postprocess import describe
from heimdall.training.examples import example_captures, octet_body, request_body
from heimdall.training.simulate import simulate_scenes


@pytest.fixture(scope="module")
def served(reference_tag, shared_redis_url):
    import bentoml
    import redis

    redis.Redis.from_url(shared_redis_url).flushdb()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEIMDALL_MODEL_TAG", reference_tag)
        mp.setenv("HEIMDALL_REDIS_URL", shared_redis_url)
        service = importlib.reload(importlib.import_module("service"))
        with TestClient(service.Heimdall.to_asgi()) as client:
            yield client, bentoml.models.get(reference_tag)


def _expected(model, captures: dict[str, np.ndarray]) -> ModelOutput:
    contract = Contract.load(model.path_of("contract.json"))
    features = FeatureExtractor(contract).capture_sets([{s: iq_from_int16(v) for s, v in captures.items()}])
    onnx = OnnxModel(model.path_of("model.onnx"), contract)
    return ModelOutput(*onnx.run(features)[0]), contract


def test_the_service_runs_blas_on_one_thread(served):
    # One worker per core: with a BLAS thread per core in every worker, a cache miss cost 3x the CPU.
    from threadpoolctl import threadpool_info

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas), blas


def test_known_capture_gives_the_in_process_answer(served):
    client, model = served
    captures = example_captures()
    r = client.post("/predict", json={**request_body(captures), "use_cache": False})
    assert r.status_code == 200, r.text
    body = r.json()
    out, contract = _expected(model, captures)
    want = describe(out, contract, 0.95, 10_000.0)
    assert body["lat"] == pytest.approx(want["lat"], abs=POSITION_TOLERANCE_DEG)
    assert body["lon"] == pytest.approx(want["lon"], abs=POSITION_TOLERANCE_DEG)
    assert body["uncertainty"] == pytest.approx(want["uncertainty"])
    assert body["confidence"] == pytest.approx(want["confidence"])
    assert 0.0 <= body["confidence"] <= 1.0
    ring = body["ellipse"]["coordinates"][0]
    assert ring[0] == ring[-1]
    assert body["model_name"] == model.tag.name and body["model_version"] == model.tag.version
    assert body["receivers"] == list(contract.receiver_ids)
    assert body["cached"] is False and body["server_ms"] > 0


def test_the_model_route_answers_raw_outputs_and_refuses_a_bad_item_on_its_own(served):
    client, model = served
    captures = example_captures()
    good = request_body(captures)
    r = client.post("/infer", json={"items": [good, good]})
    assert r.status_code == 200, r.text
    want, _ = _expected(model, captures)
    for row in r.json():
        assert row == pytest.approx(list(want), rel=1e-5, abs=1e-3)
    bad = {**good, "captures": good["captures"][:1]}
    r = client.post("/infer", json={"items": [good, bad]})
    assert r.status_code == 400 and "items[1].captures" in r.text, r.text
    assert client.post("/infer", json={"items": []}).status_code == 400


def test_every_form_gives_the_same_answer_and_shares_the_cache(served):
    client, _ = served
    captures = simulate_scenes(1, seed=99).capture_set(0)
    first = client.post("/predict", json=request_body(captures, "pairs")).json()
    assert first["cached"] is False
    again = client.post("/predict", json=request_body(captures, "int16")).json()
    body, stations = octet_body(captures)
    raw = client.post(
        f"/v1/predict/raw?stations={stations}",
        content=body,
        headers={"content-type": "application/octet-stream"},
    )
    assert raw.status_code == 200, raw.text
    for answer in (again, raw.json()):
        assert answer["cached"] is True
        assert (answer["lat"], answer["lon"]) == (first["lat"], first["lon"])


def test_repeated_capture_is_a_cache_hit_that_skips_inference(served):
    client, _ = served
    payload = request_body(simulate_scenes(1, seed=7).capture_set(0))

    def inferences() -> float:
        # In-process, the service's metrics live in this process's default registry.
        return REGISTRY.get_sample_value("heimdall_inference_seconds_count") or 0.0

    before = inferences()
    assert client.post("/predict", json=payload).json()["cached"] is False
    assert inferences() == before + 1
    hit = client.post("/predict", json={**payload, "confidence_level": 0.5}).json()
    assert hit["cached"] is True
    assert inferences() == before + 1
    # the ellipse follows the requested level, not the cached one
    assert hit["uncertainty"]["confidence_level"] == 0.5
    assert client.post("/predict", json={**payload, "use_cache": False}).json()["cached"] is False


def test_concurrent_requests_each_get_their_own_answer(served):
    client, _ = served
    scenes = simulate_scenes(12, seed=1234)
    payloads = [{**request_body(scenes.capture_set(i)), "use_cache": False} for i in range(len(scenes))]
    serial = [client.post("/predict", json=p).json() for p in payloads]
    with ThreadPoolExecutor(12) as pool:
        parallel = list(pool.map(lambda p: client.post("/predict", json=p).json(), payloads))
    # A batched ONNX run may round float32 differently from a single row:
    # agree to ~10 cm (a float32 ulp at 100 km is 8 mm).
    for a, b in zip(serial, parallel, strict=True):
        assert (a["lat"], a["lon"]) == pytest.approx((b["lat"], b["lon"]), abs=POSITION_TOLERANCE_DEG)
    assert len({(a["lat"], a["lon"]) for a in parallel}) == len(payloads)


def test_batch_answers_each_item_and_isolates_bad_ones(served):
    client, _ = served
    scenes = simulate_scenes(3, seed=5)
    items = [request_body(scenes.capture_set(i)) for i in range(3)]
    items.insert(1, {"captures": [{"station": "atlantis", "iq": [[1, 2]] * 300}]})
    r = client.post("/predict/batch", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["succeeded"], body["failed"]) == (3, 1)
    assert body["items"][1]["error"]["field"] == "items[1].captures[0].station"
    assert body["items"][1]["error"]["reason"] == "unknown_station"
    assert all(body["items"][i]["prediction"] for i in (0, 2, 3))
    assert body["samples"] == sum(int(scenes.heard[i].sum()) * 4096 for i in range(3))
    assert body["captures_per_second"] > 0 and body["samples_per_second"] > 0


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode()


GOOD = {s: iq for s, iq in list(example_captures().items())[:3]}


def _body(**overrides):
    return {**request_body(GOOD), **overrides}


def _captures(*items):
    return {"captures": [dict(zip(("station", "iq"), it, strict=True)) for it in items]}


BAD_INPUTS = [
    ("malformed JSON", b"{not json", 400, None),
    ("captures not a list", {"captures": {"torino": []}}, 400, None),
    (
        "wrong nesting",
        _captures(("torino", [1, 2, 3] * 200), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].iq",
    ),
    (
        "ragged pairs",
        _captures(("torino", [[1, 2, 3]] * 300), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].iq",
    ),
    (
        "odd-length base64",
        {
            **_captures(
                ("torino", _b64(np.zeros(601, "<i2"))),
                ("genova", _b64(np.zeros(600, "<i2"))),
                ("coazze", _b64(np.zeros(600, "<i2"))),
            )
        },
        400,
        "captures[0].iq",
    ),
    (
        "too few samples",
        _captures(("torino", [[1, 2]] * 10), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].iq",
    ),
    (
        "unknown station",
        _captures(("atlantis", [[1, 2]] * 300), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].station",
    ),
    (
        "duplicate station",
        _captures(("genova", [[1, 2]] * 300), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[1].station",
    ),
    ("too few receivers", _captures(("genova", [[1, 2]] * 300)), 400, "captures"),
    (
        "NaN complex64",
        {
            **_captures(
                ("torino", _b64(np.full(600, np.nan, "<f4"))),
                ("genova", _b64(np.zeros(600, "<f4"))),
                ("coazze", _b64(np.zeros(600, "<f4"))),
            ),
            "encoding": "complex64",
        },
        400,
        "captures[0].iq",
    ),
    (
        "out of int16 range",
        _captures(("torino", [[40000, 2]] * 300), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].iq",
    ),
    (
        "bad base64",
        _captures(("torino", "@@not base64@@"), ("genova", [[1, 2]] * 300), ("coazze", [[1, 2]] * 300)),
        400,
        "captures[0].iq",
    ),
    ("unknown encoding", _body(encoding="float128"), 400, None),
    ("empty captures", {"captures": []}, 400, "captures"),
    ("confidence level 0", _body(confidence_level=0), 400, None),
    ("confidence level 1", _body(confidence_level=1.0), 400, None),
    ("confidence level 1.5", _body(confidence_level=1.5), 400, None),
]


@pytest.mark.parametrize(("case", "payload", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_a_clear_4xx(served, case, payload, status, field):
    client, _ = served
    if isinstance(payload, bytes):
        r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/predict", json=payload)
    assert r.status_code == status, r.text
    if field is not None:
        message = r.json()["error"]
        assert message.startswith(f"{field}:"), message
        assert "received" in message and "expected" in message


def test_batch_size_limits(served):
    client, _ = served
    assert client.post("/predict/batch", json={"items": []}).status_code == 400
    many = client.post("/predict/batch", json={"items": [_body()] * 101})
    assert many.status_code == 400 and "1 to 100" in many.json()["error"]


def test_oversize_body_is_refused_before_parsing(served):
    client, _ = served
    huge = b"[" + b"0," * (9 * 1024 * 1024) + b"0]"
    r = client.post("/predict", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "at most" in r.json()["error"]


def test_raw_route_validates_its_query(served):
    client, _ = served
    body, stations = octet_body(GOOD)
    bad_level = client.post(f"/v1/predict/raw?stations={stations}&confidence_level=2", content=body)
    assert bad_level.status_code == 400 and bad_level.json()["field"] == "confidence_level"
    unknown = client.post("/v1/predict/raw?stations=torino,atlantis,genova", content=body)
    assert unknown.status_code == 400
    assert unknown.json()["field"].startswith("stations") and unknown.json()["reason"] == "unknown_station"


def test_model_info_health_and_metrics(served):
    client, model = served
    info = client.get("/v1/model").json()
    assert info["model"]["name"] == model.tag.name
    assert info["model"]["version"] == model.tag.version
    assert info["model"]["registry_alias"] == "production"
    assert (
        info["model"]["contract_fingerprint"] == Contract.load(model.path_of("contract.json")).fingerprint()
    )
    assert len(info["receivers"]) == 7
    assert info["accuracy"]["median_error_km"] > 0
    assert info["cache"]["backend"] == "redis"
    assert info["requests"]["answered_from_model"] >= 1 and info["requests"]["rejected"] >= 1
    assert "redis://" not in str(info)
    assert client.get("/readyz").status_code == 200
    assert math.isfinite(info["model"]["load_seconds"])
