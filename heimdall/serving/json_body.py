"""JSON request bodies read with simdjson: `iq` pair lists go straight to numpy.

BentoML reads a JSON body with pydantic, which builds a Python object per number:
for a capture set of 7 receivers as `[[I, Q], ...]` lists that is 57k floats and
~9 ms, and turning them into arrays cost ~5 ms more, all on the worker's event loop
while every other request on that worker waits. simdjson parses the document in C,
and an `iq` array that is exactly a list of number pairs is copied out as one float64
array of shape (n, 2) with no Python object per number.

A body whose `iq` values are base64 strings has no numbers to spare: pydantic's own
parser (jiter) reads it fastest.

Anything the fast path does not take (a document simdjson refuses, an `iq` with the
wrong nesting or something other than numbers) is read the ordinary way, so every
refusal keeps the message the decoder gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bentoml
import numpy as np
import pydantic_core
import simdjson

from heimdall.serving.bentoml_internals import is_json_serde

# What a number can be made of in minified JSON; deleting it from a pair list leaves its structure.
_NUMBER_CHARS = b"0123456789+-.eE"


def read(body: bytes) -> Any | None:
    """The document as Python objects, each `iq` list of number pairs a float64 (n, 2) array.

    None when the document is refused (malformed, not UTF-8; for simdjson also an integer
    beyond 64 bits, a float beyond float64 or an escaped NUL): the caller reads it the
    ordinary way, so the client gets the ordinary error.
    """
    if not _has_pair_lists(body):
        # Base64 `iq` strings: pydantic's own parser (jiter) reads them in ~16 us against
        # ~50 us for simdjson plus the walk over its document.
        try:
            return pydantic_core.from_json(body, allow_inf_nan=False)
        except ValueError:
            return None
    # pysimdjson looks keys up as C strings: "a\u0000b" would read as "a". A backslash is
    # rare in a capture set, and looking for one (memchr) costs ~5 us where looking for
    # the escape itself costs ~70 us over a 150 kB body.
    if b"\\" in body and b"\\u0000" in body:
        return None
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):
        return None
    return _plain(document)


def _has_pair_lists(body: bytes) -> bool:
    """Whether the first `iq` value is a list. It only picks the faster parser: either one
    reads any document right. One look near the start, where scanning the body for `[[`
    costs ~140 us."""
    at = body.find(b'"iq"')
    return at >= 0 and body[at + 4 : at + 32].lstrip(b" \t\r\n:").startswith(b"[")


def _plain(value: Any, key: str | None = None) -> Any:
    if isinstance(value, simdjson.Object):
        return {k: _plain(value[k], k) for k in value}  # items() would convert the values eagerly
    if isinstance(value, simdjson.Array):
        if key == "iq":
            pairs = _pairs(value)
            return value.as_list() if pairs is None else pairs
        return [_plain(v) for v in value]
    return value


def _pairs(array: simdjson.Array) -> np.ndarray | None:
    """A list of [I, Q] number pairs as a float64 (n, 2) array; None if it is anything else."""
    n = len(array)
    if n == 0:
        return None
    try:
        values = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    except TypeError:  # something other than a number, at any depth
        return None
    # as_buffer flattens any nesting; the structure left once the numbers are deleted
    # tells pairs from [[I, Q, x], [I]] or [[[I, Q]], ...].
    if values.size != 2 * n:
        return None
    if array.mini.translate(None, _NUMBER_CHARS) != b"[" + b"[,]," * (n - 1) + b"[,]]":
        return None
    return values.reshape(n, 2)


def api(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`bentoml.api(**options)` for an endpoint whose JSON bodies are read by `read`."""

    def decorate(func: Callable[..., Any]) -> Any:
        derived = bentoml.IODescriptor.from_input(func, skip_self=True)

        class Input(derived):  # type: ignore[misc, valid-type]
            @classmethod
            async def from_http_request(cls, request: Any, serde: Any) -> bentoml.IODescriptor:
                if is_json_serde(serde):
                    document = read(await request.body())
                    if document is not None:
                        return cls.model_validate(document)
                return await super().from_http_request(request, serde)

        Input.__name__ = Input.__qualname__ = derived.__name__
        return bentoml.api(input_spec=Input, **options)(func)

    return decorate
