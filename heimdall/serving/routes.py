"""Routes mounted under /v1 (BentoML's @api routes are POST with JSON bodies): GET model
info, the map page and an octet-stream predict route."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from heimdall.serving.errors import InputError, error_body
from heimdall.serving.map_page import map_routes
from heimdall.serving.schemas import ConfidenceLevel, Encoding
from heimdall.serving.versions import Routing

if TYPE_CHECKING:
    from heimdall.serving.pipeline import Pipeline

_level = TypeAdapter(ConfidenceLevel)
_encoding = TypeAdapter(Encoding)
_flag = TypeAdapter(bool)
log = logging.getLogger("heimdall.requests")


def _query(request: Request, name: str, adapter: TypeAdapter, default: Any, expected: str) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return adapter.validate_strings(raw)
    except ValidationError as exc:
        raise InputError(name, raw, expected, f"bad_{name}") from exc


def ops_app(pipeline: Callable[[], Pipeline], extra: Sequence[BaseRoute] = ()) -> Starlette:
    """Routes mounted under /v1, and `extra`. `pipeline` returns the worker's live Pipeline."""

    def refused(request: Request, exc: InputError) -> Response:
        pipeline().rejected(exc.reason)
        log.warning("refused %s %s with 400: %s", request.method, request.url.path, exc)
        body = error_body(exc.field, exc.received, exc.expected, exc.reason)
        return Response(body, status_code=400, media_type="application/json")

    async def model_info(_: Request) -> JSONResponse:
        return JSONResponse({**pipeline().info(), "worker_pid": os.getpid()})

    async def predict_octets(request: Request) -> Response:
        try:
            stations = [s for s in request.query_params.get("stations", "").split(",") if s]
            encoding = _query(request, "encoding", _encoding, "int16", "int16 or complex64")
            level = _query(request, "confidence_level", _level, 0.95, "a number strictly between 0 and 1")
            use_cache = _query(request, "use_cache", _flag, True, "true or false")
            routing = Routing.from_headers(request.headers.get)
            prediction = await pipeline().predict_octets(
                await request.body(), stations, encoding, level, use_cache, routing
            )
        except InputError as exc:
            return refused(request, exc)
        return Response(prediction.model_dump_json(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/model", model_info, methods=["GET"]),
            Route("/predict/raw", predict_octets, methods=["POST"]),
            *map_routes(lambda: pipeline().settings),
            *extra,
        ]
    )
