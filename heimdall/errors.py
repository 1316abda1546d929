"""Domain errors. Each names the field, the value received and what was expected.

They subclass BentoML's exceptions so the framework answers them with their
4xx status and message; `heimdall.http` maps them for the mounted routes.
"""

from __future__ import annotations

from http import HTTPStatus

from bentoml.exceptions import BentoMLException, InvalidArgument


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputError(InvalidArgument):
    """A request field that cannot be served (400). `reason` labels the rejection metric."""

    def __init__(self, field: str, received: object, expected: str, reason: str) -> None:
        self.field, self.expected, self.reason = field, expected, reason
        self.received = _shown(received)
        super().__init__(f"{field}: received {self.received}; expected {expected}")


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, received_bytes: int, limit_bytes: int) -> None:
        self.reason = "oversize"
        super().__init__(f"body: received {received_bytes} bytes; expected at most {limit_bytes} bytes")


class ModelNotServable(Exception):
    """A model or contract this code cannot serve (wrong contract version, shapes or outputs)."""
