"""JSON request bodies: parsed in C (simdjson), refused by shape before they become Python objects.

One reader for every JSON body the service takes, so one set of rules:

- An `iq` array that is exactly a list of number pairs is copied out as one float64
  (n, 2) array, with no Python object per number: pydantic would build 57k floats
  for a capture set of 7 receivers as `[[I, Q], ...]` lists.
- An `iq` array that is anything else is refused as it stands (`ragged_iq`):
  `"iq": [[], [], ...]` would otherwise become many times the body's size in Python
  lists before the decoder could refuse it (`load/hostile.py amplify` measures it).
- Outside `iq`, a document may hold at most `MAX_VALUES` JSON values (a batch of 100
  capture sets of 7 receivers holds ~2,200); a container is refused by its length
  before its items are read. With it, what a body turns into is bounded: at most
  `MAX_VALUES` Python objects, the strings (at most the body's size) and the pair
  arrays (8 bytes a number, at most 4x the JSON they came from).
- A key given twice in one object is refused (`duplicate_key`): readers disagree on
  which value wins (the first for this one's lookups, the last for `json.loads`).
- A `\\u0000` escape is refused: no field takes a NUL, and simdjson looks keys up as
  C strings (`"a\\u0000b"` would read as `"a"`).
- A malformed document, one that is not UTF-8, or a number beyond float64 or 64-bit
  integers is refused with simdjson's reason.

Every refusal is an `InputError` naming the field (`captures[2].iq`, `body`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

import numpy as np
import simdjson

from heimdall.serving.errors import InputError

MAX_VALUES = 20_000
# What a number can be made of in minified JSON; deleting it from a pair list leaves its structure.
_NUMBER_CHARS = b"0123456789+-.eE"


def read(body: bytes) -> Any:
    """The document as Python objects, each `iq` list of number pairs a float64 (n, 2) array."""
    if b"\\" in body and b"\\u0000" in body:  # memchr first: a backslash is rare in a capture set
        raise InputError("body", "a \\u0000 escape", "no NUL character: no field takes one", "nul_escape")
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc).partition(": ")[2].partition(".")[0] or str(exc)
        raise InputError(
            "body", reason, "a JSON object (RFC 8259, UTF-8, numbers within float64)", "malformed_json"
        ) from None
    return _Walk().plain(document, "")


class _Walk:
    def __init__(self) -> None:
        self.left = MAX_VALUES

    def _spend(self, n: int, where: str) -> None:
        self.left -= n
        if self.left < 0:
            raise InputError(
                where or "body",
                f"more than {MAX_VALUES} JSON values",
                f"at most {MAX_VALUES} outside `iq`",
                "too_many_values",
            )

    def plain(self, value: Any, where: str) -> Any:
        if isinstance(value, simdjson.Object):
            keys = list(value.keys())
            self._spend(len(keys), where)
            if len(set(keys)) != len(keys):
                twice = next(k for k, n in Counter(keys).items() if n > 1)
                raise InputError(
                    where or "body", f"key {twice!r} twice", "each key at most once", "duplicate_key"
                )
            prefix = f"{where}." if where else ""
            return {k: self._member(value[k], k, prefix + k) for k in keys}
        if isinstance(value, simdjson.Array):
            self._spend(len(value), where)
            return [self.plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    def _member(self, value: Any, key: str, where: str) -> Any:
        if key == "iq" and isinstance(value, simdjson.Array) and len(value):
            pairs = _pairs(value)
            if pairs is None:
                raise InputError(
                    where, f"a list of {len(value)} items", "a list of [I, Q] pairs of numbers", "ragged_iq"
                )
            return pairs
        return self.plain(value, where)


def _pairs(array: simdjson.Array) -> np.ndarray | None:
    """A list of [I, Q] number pairs as a float64 (n, 2) array; None if it is anything else."""
    n = len(array)
    try:
        values = np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    except TypeError:  # something other than a number, at any depth
        return None
    # as_buffer flattens any nesting; the structure left once the numbers are deleted
    # tells pairs from [[I, Q, x], [I]] or [[[I, Q]], ...].
    if values.size != 2 * n:
        return None
    # pysimdjson's stub says `mini` is a str; it returns the minified document's bytes
    mini = cast(bytes, array.mini)
    if mini.translate(None, _NUMBER_CHARS) != b"[" + b"[,]," * (n - 1) + b"[,]]":
        return None
    return values.reshape(n, 2)
