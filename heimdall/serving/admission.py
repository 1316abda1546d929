"""Admission: the outermost ASGI layer of every worker, deciding what it takes on.

It runs before BentoML's own middleware (`bentoml_internals.serve_behind`), so nothing
is spent on a request it refuses, and every refusal has the one error body
(`heimdall.serving.errors.error_body`):

- More than one Content-Type is refused with 400: BentoML reads the first and a
  last-one-wins reader the last, so the two would not agree on what the body is.
- A form body (multipart or urlencoded) to an @api route is refused with 415:
  none takes one, and BentoML would parse it, answering a malformed one (or
  one with over 1000 fields) with 500. The routes under /v1 read bodies as they are.
- A body over `max_bytes` is refused with 413, by its Content-Length before any of
  it is read, or (chunked) as soon as it has grown past the limit.
- A body must arrive at a minimum pace: after `grace_s` seconds it must have averaged
  `min_rate` bytes a second since its headers, or the request is refused with 408 and
  its connection closed. A client that sends a byte a second holds a connection for
  `grace_s`, never a worker.
- A request takes one of the worker's `max_in_flight` slots only once its whole body
  has arrived: clients still sending hold no slot, so slow senders cannot exhaust a
  worker. A worker already working on `max_in_flight` requests answers 503 at once
  (with Retry-After) and keeps the connection, whose body is read by then: a TCP reset
  would send every refused client through a reconnect, which under overload costs more
  than the refusal (`load/faults.py overload` measures it).
- A busy worker asks a client to reconnect (`Connection: close`), at most
  `REBALANCE_PER_S` times a second. BentoML's workers share one listening
  socket, and a client keeps the worker it first connected to: 100 keep-alive
  clients split 70/30 between two workers left one saturated and the other
  idle. A reconnect is accepted by whichever worker is waiting for work, so
  connections drift to the idle worker within seconds; the rate limit keeps
  reconnects rare when every worker is busy and moving them gains nothing.

Request headers are bounded one level down, in the HTTP protocol (`header_limit`): they
are buffered before any ASGI layer sees them.

Every POST is counted, `/infer` too: the service reaches its batcher in-process
(`heimdall.serving.batching`), so a POST to `/infer` comes from a client like any other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from heimdall.serving.direct import Handler
from heimdall.serving.errors import error_body

REBALANCE_AT = 4  # requests in flight on this worker beyond which it sheds connections
REBALANCE_PER_S = 10.0
_FORMS = frozenset({b"multipart/form-data", b"application/x-www-form-urlencoded"})
_MOUNTED = "/v1/"  # the Starlette app beside BentoML's @api routes


@dataclass(frozen=True)
class Limits:
    max_bytes: int  # largest body
    max_in_flight: int  # requests one worker works on at once
    grace_s: float = 5.0  # how long a body may take before its pace is checked
    min_rate: float = 16384.0  # bytes a second a body must average after `grace_s`


@dataclass
class _Refused(Exception):
    status: int
    field: str
    received: str
    expected: str
    reason: str


class Admission:
    """`app` behind admission; a request to a path in `routes` is answered by its handler instead
    (`heimdall.serving.direct`), with the body read here. `routes` are POST routes,
    `get_routes` GET ones (the OpenAPI document)."""

    def __init__(
        self,
        app: Any,
        limits: Limits,
        on_reject: Callable[[str], None] = lambda r: None,
        routes: Mapping[str, Handler] | None = None,
        get_routes: Mapping[str, Handler] | None = None,
        in_progress: Callable[[str], Any] | None = None,
    ) -> None:
        self.app, self.limits, self.on_reject = app, limits, on_reject
        self.routes, self.get_routes = routes or {}, get_routes or {}
        # `in_progress(path)`: a gauge (inc, dec) of the requests to `routes` this worker has taken
        # from their headers on, as BentoML's in-progress metric counts its own routes.
        self.in_progress = in_progress
        self.in_flight = 0
        self._next_shed = 0.0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            handler = self.get_routes.get(scope["path"]) if scope.get("method") == "GET" else None
            if handler is None:
                return await self.app(scope, receive, send)
            status, payload = await handler(scope, b"")
            return await _respond(send, status, payload, [])
        gauge = self.in_progress(scope["path"]) if self.in_progress and scope["path"] in self.routes else None
        if gauge is None:
            return await self._admit(scope, receive, send)
        gauge.inc()
        try:
            await self._admit(scope, receive, send)
        finally:
            gauge.dec()

    async def _admit(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            self._check_headers(scope)
            body = await self._body(receive)
        except _Refused as refusal:
            return await self._refuse(send, refusal, keep_alive=False)
        if body is None:  # the client went away
            return
        if self.in_flight >= self.limits.max_in_flight:
            busy = f"{self.limits.max_in_flight} requests in flight on this worker"
            overloaded = _Refused(503, "request", busy, "a retry after 1 s", "overloaded")
            return await self._refuse(send, overloaded, keep_alive=True)
        self.in_flight += 1
        try:
            handler = self.routes.get(scope["path"])
            if handler is None:
                return await self.app(scope, _replay(body, receive), self._rebalancing(send))
            status, payload = await handler(scope, body)
            await _respond(self._rebalancing(send), status, payload, [])
        finally:
            self.in_flight -= 1

    def _check_headers(self, scope: dict) -> None:
        types = [v for k, v in scope["headers"] if k == b"content-type"]
        if len(types) > 1:
            raise _Refused(
                400, "content-type", f"{len(types)} Content-Type headers", "at most one", "duplicate_header"
            )
        media_type = types[0].partition(b";")[0].strip().lower() if types else b""
        if media_type in _FORMS and not scope["path"].startswith(_MOUNTED):
            raise _Refused(415, "content-type", repr(media_type.decode()), "application/json", "form_body")
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_bytes):
            shown = f"{int(declared)} bytes" if declared.isdigit() else "an invalid Content-Length"
            raise self._too_large(shown)

    def _too_large(self, shown: str) -> _Refused:
        return _Refused(413, "body", shown, f"at most {self.limits.max_bytes} bytes", "oversize")

    async def _body(self, receive: Callable) -> bytes | None:
        """The whole body, read at the minimum pace; None if the client went away."""
        limits, loop = self.limits, asyncio.get_running_loop()
        start = loop.time()
        chunks, size = [], 0
        while True:
            # The next chunk is due by the time the bytes so far stop meeting the pace.
            due = start + limits.grace_s + size / limits.min_rate
            try:
                async with asyncio.timeout_at(due):
                    message = await receive()
            except TimeoutError:
                raise _Refused(
                    408,
                    "body",
                    f"{size} bytes in {loop.time() - start:.1f} s",
                    f"the body within {limits.grace_s:g} s, then at least {limits.min_rate:g} bytes/s",
                    "slow_body",
                ) from None
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limits.max_bytes:
                raise self._too_large(f"{size} bytes")
            if not message.get("more_body"):
                return b"".join(chunks)

    def _rebalancing(self, send: Callable) -> Callable:
        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start" and self.in_flight > REBALANCE_AT:
                now = time.monotonic()
                if now >= self._next_shed:
                    self._next_shed = now + 1 / REBALANCE_PER_S
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        return wrapped

    async def _refuse(self, send: Callable, refusal: _Refused, keep_alive: bool) -> None:
        self.on_reject(refusal.reason)
        payload = error_body(refusal.field, refusal.received, refusal.expected, refusal.reason)
        headers = []
        if not keep_alive:  # what is left of the body stays unread: this connection is done
            headers.append((b"connection", b"close"))
        if refusal.status == 503:
            headers.append((b"retry-after", b"1"))
        await _respond(send, refusal.status, payload, headers)


async def _respond(send: Callable, status: int, payload: bytes, headers: list) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Callable) -> Callable:
    """A `receive` that gives the body read, then whatever the connection says next (a disconnect)."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
