"""The prediction routes, served by the front door (`admission.Admission`) straight to the Pipeline.

`/predict`, `/predict/batch` and `/infer` are declared as BentoML APIs (the OpenAPI
document, BentoML's Python client and the adaptive batcher come from those
declarations), but a request to one never passes BentoML's per-request machinery: its
middleware (OpenTelemetry spans, metrics, access log, timeout), its input and output
descriptors (a JSON schema rebuilt for every response), or its error handling, which
logs a client's mistake at ERROR with a traceback and answers it in three different
shapes. Here a body is read once (`json_body.read`), validated against the route's
request model, answered by the Pipeline and encoded by pydantic-core; every refusal is
the one error body, counted once and logged once, one WARNING line without a traceback.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from heimdall.serving import json_body
from heimdall.serving.errors import InputError, error_body
from heimdall.serving.openapi import openapi_document
from heimdall.serving.schemas import BatchRequest, InferRequest, PredictRequest
from heimdall.serving.versions import Routing

if TYPE_CHECKING:
    from heimdall.serving.pipeline import Pipeline

log = logging.getLogger("heimdall.requests")
Answer = tuple[int, bytes]
Handler = Callable[[dict, bytes], Awaitable[Answer]]
_JSON_TYPES = frozenset({"", "application/json"})
_outputs = TypeAdapter(list[list[float]])


class DirectRoutes:
    """`routes[path](scope, body) -> (status, JSON body)` for POST, `get_routes` for GET (the OpenAPI
    document); `pipeline` returns the worker's live Pipeline, `infer_batched` sends decoded
    capture sets through the adaptive batcher."""

    def __init__(
        self,
        pipeline: Callable[[], Pipeline],
        infer_batched: Callable[[list[Any]], Awaitable[list[Any]]],
        on_reject: Callable[[str], None],
    ) -> None:
        self._pipeline, self._infer_batched, self._on_reject = pipeline, infer_batched, on_reject
        self._document: bytes | None = None
        self.routes: dict[str, Handler] = {
            "/predict": self._guarded(PredictRequest, self._predict),
            "/predict/batch": self._guarded(BatchRequest, self._predict_batch),
            "/infer": self._guarded(InferRequest, self._infer),
        }
        self.get_routes: dict[str, Handler] = {"/docs.json": self._docs}

    async def _docs(self, scope: dict, body: bytes) -> Answer:
        if self._document is None:  # needs the served contract, known once the worker is up
            pipeline = self._pipeline()
            document = openapi_document(pipeline.model.contract, pipeline.settings, pipeline.model.version)
            self._document = json.dumps(document).encode()
        return 200, self._document

    async def _predict(self, request: PredictRequest, routing: Routing) -> bytes:
        answer = await self._pipeline().predict(
            request.captures, request.encoding, request.confidence_level, request.use_cache, routing
        )
        return answer.__pydantic_serializer__.to_json(answer)

    async def _predict_batch(self, request: BatchRequest, routing: Routing) -> bytes:
        answer = await self._pipeline().predict_batch(
            request.items, request.confidence_level, request.use_cache, routing
        )
        return answer.__pydantic_serializer__.to_json(answer)

    async def _infer(self, request: InferRequest, _: Routing) -> bytes:
        rows = self._pipeline().decode_rows(request.items)
        return _outputs.dump_json(await self._infer_batched(rows))

    def _guarded(self, model: type[BaseModel], run: Callable[[Any, Routing], Awaitable[bytes]]) -> Handler:
        async def measured(scope: dict, body: bytes) -> Answer:
            metrics, endpoint = self._pipeline().metrics, scope["path"]
            start = time.perf_counter()
            status, payload = await handle(scope, body)
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
            metrics.requests.labels(endpoint, str(status)).inc()
            return status, payload

        async def handle(scope: dict, body: bytes) -> Answer:
            if (media_type := _media_type(scope)) not in _JSON_TYPES:
                return self._refused(
                    scope, 415, InputError("content-type", media_type, "application/json", "content_type")
                )
            try:
                try:
                    request = model.model_validate(json_body.read(body))
                except ValidationError as exc:
                    raise _refusal(exc) from None
                return 200, await run(request, Routing.from_headers(lambda name: _header(scope, name)))
            except InputError as exc:
                return self._refused(scope, 400, exc)

        return measured

    def _refused(self, scope: dict, status: int, exc: InputError) -> Answer:
        self._on_reject(exc.reason)
        log.warning("refused %s %s with %d: %s", scope["method"], scope["path"], status, exc)
        return status, error_body(exc.field, exc.received, exc.expected, exc.reason)


def _header(scope: dict, name: str) -> str | None:
    """The first value of header `name` (lower case), or None."""
    key = name.encode("latin-1")
    value = next((v for k, v in scope["headers"] if k == key), None)
    return None if value is None else value.decode("latin-1")


def _media_type(scope: dict) -> str:
    value = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    return value.partition(b";")[0].strip().lower().decode("latin-1")


def _refusal(exc: ValidationError) -> InputError:
    """A request model's first complaint, as an InputError naming the field as the decoder does."""
    first = exc.errors(include_url=False, include_context=False)[0]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    return InputError(field or "body", first["input"], first["msg"], f"schema_{first['type']}")
