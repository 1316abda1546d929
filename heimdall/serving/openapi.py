"""The service's OpenAPI 3.1 document, served at GET /docs.json (BentoML's Swagger UI at / reads it).

BentoML 1.4 writes its own document as OpenAPI 3.0.2 but fills it with pydantic's JSON
Schema 2020-12 (numeric `exclusiveMinimum`), which 3.0 validators and code generators
refuse, and declares error bodies the service never sends. This one is OpenAPI 3.1, whose
schema dialect is JSON Schema 2020-12, so pydantic's schemas are valid in it as they are;
it is built from the request and response models the routes really validate and answer
with, and from the served model's contract (its receivers, how many it needs).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from heimdall.contract.document import Contract
from heimdall.serving.schemas import (
    BatchPrediction,
    BatchRequest,
    ErrorBody,
    InferRequest,
    Prediction,
    PredictRequest,
)
from heimdall.serving.settings import Settings

_REF = "#/components/schemas/{model}"
_REFUSALS = {
    "400": "the request is not one the service can answer (the field, the value, what was expected)",
    "408": "the body did not arrive at the minimum pace",
    "413": "the body is over the size limit",
    "415": "a body that is not JSON",
    "431": "the request line and headers are over the size limit",
    "503": "this worker is at capacity: retry after Retry-After seconds",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(answer: dict, refusals: tuple[str, ...] = tuple(_REFUSALS)) -> dict:
    responses: dict[str, Any] = {"200": {"description": "the answer", **_json(answer)}}
    for status in refusals:
        responses[status] = {"description": _REFUSALS[status], **_json(_ref("ErrorBody"))}
    if "503" in responses:
        responses["503"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return responses


def _post(summary: str, request: str, answer: dict) -> dict:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, **_json(_ref(request))},
            "responses": _responses(answer),
        }
    }


def openapi_document(contract: Contract, settings: Settings, version: str) -> dict[str, Any]:
    """The document for a worker serving `contract`; `version` is the served model's."""
    _, top = models_json_schema(
        [
            (PredictRequest, "validation"),
            (BatchRequest, "validation"),
            (InferRequest, "validation"),
            (Prediction, "serialization"),
            (BatchPrediction, "serialization"),
            (ErrorBody, "serialization"),
        ],
        ref_template=_REF,
    )
    schemas = top["$defs"]
    ids = list(contract.receiver_ids)
    captures = {"minItems": contract.min_receivers, "maxItems": len(ids)}
    schemas["Capture"]["properties"]["station"]["enum"] = ids
    schemas["PredictRequest"]["properties"]["captures"] |= captures
    schemas["CaptureSetIn"]["properties"]["captures"] |= captures
    schemas["BatchRequest"]["properties"]["items"] |= {"minItems": 1, "maxItems": settings.max_batch_items}
    schemas["InferRequest"]["properties"]["items"] |= {"maxItems": settings.max_batch_size}
    outputs = {
        "type": "array",
        "items": {"type": "array", "items": {"type": "number"}, "minItems": 5, "maxItems": 5},
    }
    raw_query = [
        {"name": "stations", "in": "query", "required": True, "schema": {"type": "string"},
         "description": "the receivers, comma-separated, in the order their arrays are concatenated"},
        {"name": "encoding", "in": "query", "schema": {"enum": ["int16", "complex64"], "default": "int16"}},
        {"name": "confidence_level", "in": "query",
         "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.95}},
        {"name": "use_cache", "in": "query", "schema": {"type": "boolean", "default": True}},
    ]  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Heimdall Serve",
            "version": version,
            "description": "Transmitter positions from WebSDR capture sets.",
        },
        "paths": {
            "/predict": _post(
                "Locate the transmitter heard in one capture set", "PredictRequest", _ref("Prediction")
            ),
            "/predict/batch": _post(
                "Locate 1-100 capture sets; a bad item gets its own error",
                "BatchRequest",
                _ref("BatchPrediction"),
            ),
            "/infer": _post(
                "The model's raw outputs [east m, north m, sigma east m, sigma north m, correlation]",
                "InferRequest",
                outputs,
            ),
            "/v1/predict/raw": {
                "post": {
                    "summary": "Locate from an octet-stream body: the receivers' arrays concatenated",
                    "parameters": raw_query,
                    "requestBody": {
                        "required": True,
                        "content": {"application/octet-stream": {"schema": {}}},
                    },
                    "responses": _responses(_ref("Prediction"), ("400", "408", "413", "431", "503")),
                }
            },
            "/v1/model": {
                "get": {
                    "summary": "The served model, its contract and this worker's counters",
                    "responses": {"200": {"description": "model info", **_json({"type": "object"})}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "200 once the model is loaded and warmed up",
                    "responses": {"200": {"description": "ready"}},
                }
            },
        },  # fmt: skip
        "components": {"schemas": schemas},
    }
