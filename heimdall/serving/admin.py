"""Routes that change the service's state, behind `Authorization: Bearer <HEIMDALL_ADMIN_TOKEN>`.

No token configured: the routes are off (404). No bearer token: 401. Another token: 403.
Tokens are compared in constant time and never appear in a response or a log line.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from heimdall.serving.errors import error_body, shown

if TYPE_CHECKING:
    from heimdall.serving.follower import Follower

_EXPECTED = "Authorization: Bearer <HEIMDALL_ADMIN_TOKEN>"


def _refused(status: int, field: str, received: str, expected: str, reason: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = error_body(field, shown(received), expected, reason)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _authorize(request: Request, token: SecretStr | None) -> Response | None:
    """None when the request carries the admin token, else the refusal to answer with."""
    if token is None:
        return _refused(
            404, "path", request.url.path, "HEIMDALL_ADMIN_TOKEN set (admin routes are off)", "off"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _refused(401, "Authorization", "no bearer token", _EXPECTED, "unauthenticated")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        return _refused(403, "Authorization", "a token that is not the admin token", _EXPECTED, "forbidden")
    return None


def admin_routes(follower: Callable[[], Follower], token: SecretStr | None) -> list[Route]:
    """`POST /admin/reload`: check the registry now, on every worker; answers this worker's state."""

    async def reload(request: Request) -> Response:
        if (refusal := _authorize(request, token)) is not None:
            return refusal
        live = follower()
        if not live.following:
            return _refused(
                409, "HEIMDALL_MODEL_URI", "unset", "models:/NAME@ALIAS to follow", "not_following"
            )
        live.signal_all()
        registry = await live.check()
        info = live.pipeline.info()
        return JSONResponse(
            {
                "registry": registry,
                "models": info["models"],
                "candidate": info["candidate"],
                "worker_pid": os.getpid(),
            }
        )

    return [Route("/admin/reload", reload, methods=["POST"])]
