"""Domain errors and the one error body every refusal answers with.

`InputError` subclasses BentoML's InvalidArgument so the framework answers it with its
4xx status; `heimdall.serving.routes` and `heimdall.serving.admission` turn refusals into
`error_body` responses.
"""

from __future__ import annotations

import json
import reprlib

from bentoml.exceptions import InvalidArgument

# A client's value as shown back: long containers and strings cut short before they are
# rendered, so showing a 16 MiB list costs no more than showing a short one.
_repr = reprlib.Repr()
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 4
_repr.maxstring, _repr.maxlong, _repr.maxother = 60, 40, 60


def shown(value: object, limit: int = 80) -> str:
    """A value received, as the error body shows it: `repr`, bounded."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(field: str, received: str, expected: str, reason: str) -> bytes:
    """`{error, field, received, expected, reason}` as JSON: what every refusal answers with."""
    return json.dumps(
        {
            "error": f"{field}: received {received}; expected {expected}",
            "field": field,
            "received": received,
            "expected": expected,
            "reason": reason,
        }
    ).encode()


class InputError(InvalidArgument):
    """A request field that cannot be served (400). `reason` labels the rejection metric."""

    def __init__(self, field: str, received: object, expected: str, reason: str) -> None:
        self.field, self.expected, self.reason = field, expected, reason
        self.received = shown(received)
        super().__init__(f"{field}: received {self.received}; expected {expected}")
