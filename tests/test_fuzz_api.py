"""Fuzzing a real `bentoml serve`: no request, however malformed, gets a 5xx.

The served OpenAPI document is valid OpenAPI 3.1 (openapi-spec-validator), and
schemathesis drives its POST operations from it as served: no 5xx, and every answer,
refusals included, matches the document's status codes, content types and schemas.
The /v1/predict/raw route is fuzzed by hypothesis too, with its octet bodies spoiled.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import RedisServer, Serve

from heimdall.contract.document import Contract
from heimdall.serving.schemas import Prediction
from heimdall.training.examples import request_body

pytestmark = pytest.mark.slow

IDS = Contract().receiver_ids
LOW = Contract().features.min_samples


@pytest.fixture(scope="module")
def service(reference_tag, tmp_path_factory) -> Iterator[Serve]:
    workdir = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer(workdir)
    redis.start()
    serve = Serve(reference_tag, workdir / "serve.log", redis.url)
    yield serve
    serve.stop()
    redis.stop()


CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def document(service) -> dict:
    return httpx.get(f"{service.url}/docs.json", timeout=10).json()


def test_the_served_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate_openapi(document)  # raises, naming the first violation
    captures = document["components"]["schemas"]["PredictRequest"]["properties"]["captures"]
    assert captures["minItems"] == Contract().min_receivers


@pytest.fixture(scope="module")
def api_schema(service, document):
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=service.url)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema").include(method="POST")


@schema.parametrize()
@settings(max_examples=100)
def test_api_operations_never_answer_5xx_and_every_answer_matches_the_document(case):
    response = case.call(timeout=30)
    case.validate_response(response, checks=CONFORMANCE)


# Capture sets the service must answer: 3-7 receivers, silent, clipped or noisy int16 I/Q.
capture_sets = st.permutations(IDS).flatmap(
    lambda order: st.integers(3, len(IDS)).flatmap(
        lambda k: st.integers(LOW, 2 * LOW).flatmap(
            lambda n: arrays("<i2", (k, 2 * n)).map(lambda iq: dict(zip(order, iq, strict=False)))
        )
    )
)
levels = st.floats(0, 1, exclude_min=True, exclude_max=True)
texts = st.text(max_size=12)


@given(captures=capture_sets, form=st.sampled_from(["pairs", "int16"]), level=levels, use_cache=st.booleans())
@settings(max_examples=40)
def test_valid_capture_sets_get_answers_that_match_the_declared_schema(
    api_schema, captures, form, level, use_cache
):
    body = {**request_body(captures, form), "confidence_level": level, "use_cache": use_cache}
    case = api_schema["/predict"]["POST"].Case(body=body)
    response = case.call(timeout=30)
    case.validate_response(response, checks=CONFORMANCE)
    assert response.status_code == 200, response.text
    answer = Prediction.model_validate(response.json())
    assert answer.receivers == [s for s in IDS if s in captures]
    assert 0 <= answer.confidence <= 1 and answer.uncertainty.confidence_level == level


@st.composite
def raw_requests(draw) -> tuple[dict, bytes]:
    """Octet bodies for a station list, well-formed or with one thing spoiled: cut, garbage, or the query."""
    chosen = list(draw(st.permutations(IDS)))[: 5 - draw(st.integers(0, 5))]
    encoding = draw(st.sampled_from(["int16", "complex64"]))
    n = draw(st.integers(LOW, 2 * LOW))
    if encoding == "int16":
        body = draw(arrays("<i2", 2 * n * len(chosen))).tobytes()
    else:
        body = draw(arrays("<f4", 2 * n * len(chosen), elements=st.floats(-1, 1, width=32))).tobytes()
    params = {"stations": ",".join(chosen), "encoding": encoding}
    spoil = draw(st.sampled_from(["nothing", "cut", "garbage", "query"]))
    if spoil == "cut":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif spoil == "garbage":
        body = draw(st.binary(max_size=64))
    elif spoil == "query":
        keys = st.sampled_from([*params, "confidence_level", "use_cache"]) | texts
        values = st.sampled_from(["0.5", "1e-9", "1", "nan", "true", "false", "int8", "giaveno,,"]) | texts
        params |= draw(st.dictionaries(keys, values, min_size=1, max_size=3))
    return params, body


@given(request=raw_requests())
@settings(max_examples=120)
def test_raw_route_never_answers_5xx(service, request):
    params, body = request
    r = httpx.post(
        f"{service.url}/v1/predict/raw",
        params=params,
        content=body,
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        answer = Prediction.model_validate(r.json())
        assert answer.receivers == [s for s in IDS if s in params["stations"].split(",")]
    else:
        assert r.status_code == 400 and r.json()["field"]


FORM_FIELDS = b"&".join(b"k%d=1" % i for i in range(1001))


# BentoML parsed form bodies for its @api routes and answered these with 500.
@example(path="/predict", content_type="multipart/form-data", body=b'{"captures": []}')
@example(path="/infer", content_type="multipart/form-data; boundary=x", body=b"garbage")
@example(path="/predict/batch", content_type="application/x-www-form-urlencoded", body=FORM_FIELDS)
@given(
    path=st.sampled_from(["/predict", "/predict/batch", "/infer", "/v1/predict/raw"]),
    content_type=st.sampled_from(
        ["application/json", "multipart/form-data", "application/x-www-form-urlencoded", "text/plain"]
    )
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    body=st.binary(max_size=256) | st.just(FORM_FIELDS),
)
@settings(max_examples=80)
def test_any_body_under_any_content_type_never_gets_a_5xx(service, path, content_type, body):
    r = httpx.post(f"{service.url}{path}", content=body, headers={"content-type": content_type}, timeout=30)
    assert r.status_code < 500, r.text
