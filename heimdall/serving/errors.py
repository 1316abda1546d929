"""Domain errors. Each names the field, the value received and what was expected.

They subclass BentoML's exceptions so the framework answers them with their
4xx status and message; `heimdall.serving.routes` maps them for the mounted routes.
"""

from __future__ import annotations

from bentoml.exceptions import InvalidArgument


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputError(InvalidArgument):
    """A request field that cannot be served (400). `reason` labels the rejection metric."""

    def __init__(self, field: str, received: object, expected: str, reason: str) -> None:
        self.field, self.expected, self.reason = field, expected, reason
        self.received = _shown(received)
        super().__init__(f"{field}: received {self.received}; expected {expected}")
