"""Request headers bounded where they are buffered: in uvicorn's HTTP protocol.

uvicorn (with httptools) keeps every header byte until the headers are complete, with
no limit: eight connections holding 64 MiB of headers each added 256 MiB to a worker.
No ASGI layer can help, since none runs before the headers are complete. This protocol
counts the bytes of a request head as they arrive (and measures a head that arrived
whole) and, past `max_bytes`, answers 431 with the one error body and closes the
connection. `bentoml_internals.bound_headers`
makes it the protocol BentoML's workers serve with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from heimdall.serving.errors import error_body


class HeaderLimitedProtocol(HttpToolsProtocol):
    max_bytes: ClassVar[int] = 32 * 1024  # request line and headers
    on_reject: ClassVar[Callable[[str], None]] = staticmethod(lambda reason: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._oversize = True, 0, False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_bytes:
            # Raising stops the parser; uvicorn answers a parser error with `send_400_response`.
            self._oversize = True
            raise ValueError("request head over the limit")
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._oversize:
            self._refuse()
        else:
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Counted after parsing, so a chunk that completes the head (and carries body
        # bytes) is never held against it.
        self._head_bytes += len(data)
        if self._head_bytes > self.max_bytes:
            self._refuse()

    def _refuse(self) -> None:
        type(self).on_reject("header_size")
        payload = error_body(
            "headers",
            f"more than {self.max_bytes} bytes of request line and headers",
            f"at most {self.max_bytes} bytes",
            "header_size",
        )
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(payload)
        )
        self.transport.write(head + payload)
        self.transport.close()
