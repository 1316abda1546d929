"""Admission: the ASGI middleware in front of every route, deciding what each worker takes on.

- A body over `max_bytes` is refused with 413 before anything parses it.
- A form body (multipart or urlencoded) to an @api route is refused with 415:
  none takes one, and BentoML would parse it, answering a malformed one (or
  one with over 1000 fields) with 500. The routes under /v1 read bodies as they are.
- A worker already working on `max_in_flight` requests answers 503 at once
  (with Retry-After), so under overload the admitted requests keep a bounded
  latency and the rest learn quickly that they should come back. It reads and
  drops the body first and keeps the connection: closing it with the body unread
  (a TCP reset) sent every refused client through a reconnect, and at 3x the
  saturation rate the refusals then took 2 s instead of 30 ms.
- A busy worker asks a client to reconnect (`Connection: close`), at most
  `REBALANCE_PER_S` times a second. BentoML's workers share one listening
  socket, and a client keeps the worker it first connected to: 100 keep-alive
  clients split 70/30 between two workers left one saturated and the other
  idle. A reconnect is accepted by whichever worker is waiting for work, so
  connections drift to the idle worker within seconds; the rate limit keeps
  reconnects rare when every worker is busy and moving them gains nothing.

Every POST is counted, `/infer` too: the service reaches its batcher in-process
(`heimdall.batching`), so a POST to `/infer` comes from a client like any other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

REBALANCE_AT = 4  # requests in flight on this worker beyond which it sheds connections
REBALANCE_PER_S = 10.0
_FORMS = frozenset({b"multipart/form-data", b"application/x-www-form-urlencoded"})
_MOUNTED = "/v1/"  # the Starlette app beside BentoML's @api routes


class Admission:
    def __init__(
        self,
        app: Any,
        max_bytes: int,
        max_in_flight: int,
        on_reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app, self.on_reject = app, on_reject
        self.max_bytes, self.max_in_flight = max_bytes, max_in_flight
        self.in_flight = 0
        self._next_shed = 0.0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if media_type in _FORMS and not scope["path"].startswith(_MOUNTED):
            error = f"content-type: received {media_type.decode()!r}; expected application/json"
            return await self._refuse(send, 415, "form_body", error)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            shown = f"{int(declared)} bytes" if declared.isdigit() else "an invalid Content-Length"
            return await self._too_large(send, shown)
        if self.in_flight >= self.max_in_flight:
            if await self._drained(receive):
                error = f"{self.max_in_flight} requests in flight on this worker; retry"
                await self._refuse(send, 503, "overloaded", error, keep_alive=True)
            return
        self.in_flight += 1
        try:
            if declared is None:
                receive = await self._buffered(receive, send)
                if receive is None:
                    return
            await self.app(scope, receive, self._rebalancing(send))
        finally:
            self.in_flight -= 1

    async def _too_large(self, send: Callable, shown: str) -> None:
        error = f"body: received {shown}; expected at most {self.max_bytes} bytes"
        await self._refuse(send, 413, "oversize", error)

    def _rebalancing(self, send: Callable) -> Callable:
        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start" and self.in_flight > REBALANCE_AT:
                now = time.monotonic()
                if now >= self._next_shed:
                    self._next_shed = now + 1 / REBALANCE_PER_S
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        return wrapped

    async def _buffered(self, receive: Callable, send: Callable) -> Callable | None:
        """Reads a body sent without Content-Length (chunked) up to the limit and replays it."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(send, f"{size} bytes")
                return None
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _drained(self, receive: Callable) -> bool:
        """Reads and drops the request body (at most `max_bytes`); False if the client went away."""
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            size += len(message.get("body", b""))
            if size > self.max_bytes or not message.get("more_body"):
                return True

    async def _refuse(
        self, send: Callable, status: int, reason: str, error: str, keep_alive: bool = False
    ) -> None:
        self.on_reject(reason)
        payload = json.dumps({"error": error, "reason": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if not keep_alive:  # the unread body stays on the socket: this connection is done
            headers.append((b"connection", b"close"))
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
