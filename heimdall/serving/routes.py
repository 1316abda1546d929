"""HTTP pieces BentoML's @api routes do not cover: GET model info, the map page, an
octet-stream predict route, and refusals as 400 responses."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from heimdall.serving.errors import InputError
from heimdall.serving.map_page import map_routes
from heimdall.serving.schemas import ConfidenceLevel, Encoding

if TYPE_CHECKING:
    from heimdall.serving.pipeline import Pipeline

_level = TypeAdapter(ConfidenceLevel)
_encoding = TypeAdapter(Encoding)
_flag = TypeAdapter(bool)


def _query(request: Request, name: str, adapter: TypeAdapter, default: Any, expected: str) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return adapter.validate_strings(raw)
    except ValidationError as exc:
        raise InputError(name, raw, expected, f"bad_{name}") from exc


def error_response(exc: InputError) -> JSONResponse:
    """The one place a refused input becomes HTTP: 400 with the field, the value and what was expected."""
    body = {
        "error": str(exc),
        "field": exc.field,
        "received": exc.received,
        "expected": exc.expected,
        "reason": exc.reason,
    }
    return JSONResponse(body, status_code=400)


def refusals_as_400(api: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wraps an async @bentoml.api method so an InputError answers with `error_response`."""

    @functools.wraps(api)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await api(*args, **kwargs)
        except InputError as exc:
            return error_response(exc)

    return wrapper


def ops_app(pipeline: Callable[[], Pipeline]) -> Starlette:
    """Routes mounted under /v1. `pipeline` returns the worker's live Pipeline."""

    async def model_info(_: Request) -> JSONResponse:
        return JSONResponse({**pipeline().info(), "worker_pid": os.getpid()})

    async def predict_octets(request: Request) -> JSONResponse:
        try:
            stations = [s for s in request.query_params.get("stations", "").split(",") if s]
            encoding = _query(request, "encoding", _encoding, "int16", "int16 or complex64")
            level = _query(request, "confidence_level", _level, 0.95, "a number strictly between 0 and 1")
            use_cache = _query(request, "use_cache", _flag, True, "true or false")
            prediction = await pipeline().predict_octets(
                await request.body(), stations, encoding, level, use_cache
            )
        except InputError as exc:
            return error_response(exc)
        return JSONResponse(prediction.model_dump(mode="json"))

    return Starlette(
        routes=[
            Route("/model", model_info, methods=["GET"]),
            Route("/predict/raw", predict_octets, methods=["POST"]),
            *map_routes(lambda: pipeline().settings),
        ]
    )
