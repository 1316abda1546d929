"""Request decoding: captures in any accepted form -> one canonical `CaptureSet`.

Three wire forms carry the same thing, the IQ samples each receiver heard:

- JSON `[[I, Q], ...]` lists of int16 ADC counts (the map front end). Numbers
  may be floats but must be finite and within the int16 range.
- A base64 string per receiver in the request's `encoding`: "int16"
  (interleaved little-endian int16 I/Q, as WebSDRs deliver it) or "complex64"
  (interleaved little-endian float32 I/Q in full-scale units, within [-1, 1]).
- An octet-stream body: the receivers' arrays in `encoding`, concatenated in
  the order of a station list, all the same length.

All three decode to complex64 full-scale samples (ADC counts / 32768, exact),
so the same capture gets the same `digest` whatever form it came in: the
cache key does not depend on how the client chose to send it.

Every refusal is an `InputError` naming the field, the value received, what
was expected and a `reason` label. Anything a client can send ends there,
never in an unhandled exception.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pybase64
from blake3 import blake3

from heimdall.contract.document import Contract
from heimdall.contract.features import INT16_FULL_SCALE
from heimdall.serving.errors import InputError

# Bytes per complex sample on the wire, by encoding.
ENCODINGS: dict[str, int] = {"int16": 4, "complex64": 8}
_INT16_MIN, _INT16_MAX = -32768, 32767
_SCALE = np.float32(1.0 / INT16_FULL_SCALE)  # a power of two: scaling by it is exact
_DIGEST_PERSON = b"heimdall-iq-v2"  # bumps if the canonical form or its hashing ever changes
_HEADER = struct.Struct("<IQ?")  # receiver index in the contract, sample count, hashed as complex64
# A receiver's complex64 full-scale samples and, when known, the int16 counts they came from.
_Decoded = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class CaptureSet:
    """A validated capture set in canonical form.

    `iq`: station id -> complex64 samples in full-scale units, read-only, in
    contract receiver order. `digest`: 16-byte BLAKE3 of the canonical IQ,
    the cache key. `samples`: total IQ samples over all receivers.
    """

    iq: dict[str, np.ndarray]
    digest: bytes
    samples: int


def decode_captures(
    captures: object, encoding: str, contract: Contract, max_samples: int, field: str = "captures"
) -> CaptureSet:
    """Decode a list of (station, iq) pairs, {"station", "iq"} mappings or objects with those attributes.

    `iq` is a JSON list of [I, Q] ADC counts or a base64 string in `encoding`.
    """
    _check_encoding(encoding)
    if not isinstance(captures, Sequence) or isinstance(captures, str | bytes):
        raise InputError(field, captures, 'a list of {"station": ..., "iq": ...} objects', "ragged_iq")
    if not captures:
        raise InputError(field, [], f"captures from at least {contract.min_receivers} receivers", "empty")
    pairs = [_station_and_iq(item, f"{field}[{i}]") for i, item in enumerate(captures)]
    # Stations first: refusing an unknown or short set costs nothing next to decoding the samples.
    stations = _check_stations([s for s, _ in pairs], contract, field, field + "[{}].station")
    decoded: dict[str, _Decoded] = {}
    wire: dict[str, bytes] = {}  # base64 receivers' bytes, converted together once all are checked
    places: dict[str, str] = {}
    for i, (station, (_, data)) in enumerate(zip(stations, pairs, strict=True)):
        places[station] = where = f"{field}[{i}].iq"
        if isinstance(data, str):
            wire[station] = _from_base64(data, encoding, max_samples, contract, where)
        else:
            decoded[station] = _from_pairs(data, max_samples, contract, where)
    decoded.update(_from_bytes(wire, encoding, places))
    return _canonical(decoded, contract)


def decode_octets(
    body: bytes, stations: Sequence[str], encoding: str, contract: Contract, max_samples: int
) -> CaptureSet:
    """Decode a raw body: the receivers' arrays in `encoding`, concatenated in `stations` order."""
    _check_encoding(encoding)
    if isinstance(stations, str) or not isinstance(stations, Sequence) or not stations:
        raise InputError(
            "stations", stations, f"a list of at least {contract.min_receivers} station ids", "empty"
        )
    _check_stations(list(stations), contract, "stations", "stations[{}]")
    if not body:
        raise InputError("body", b"", f"{len(stations)} equal-length {encoding} arrays", "empty")
    width = ENCODINGS[encoding] * len(stations)
    if len(body) % width:
        raise InputError(
            "body",
            f"{len(body)} bytes",
            f"a multiple of {width} bytes ({len(stations)} receivers x {ENCODINGS[encoding]} bytes/sample)",
            "odd_length",
        )
    n = len(body) // width
    _check_count(n, max_samples, contract, "body")
    chunk = n * ENCODINGS[encoding]
    wire = {s: memoryview(body)[i * chunk : (i + 1) * chunk] for i, s in enumerate(stations)}
    return _canonical(_from_bytes(wire, encoding, {s: f"body[{s}]" for s in stations}), contract)


def _check_encoding(encoding: object) -> None:
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise InputError("encoding", encoding, " or ".join(map(repr, ENCODINGS)), "bad_encoding")


def _station_and_iq(item: object, where: str) -> tuple[object, object]:
    if isinstance(item, Mapping) and "station" in item and "iq" in item:
        return item["station"], item["iq"]
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    if hasattr(item, "station") and hasattr(item, "iq"):  # a schema object, e.g. a pydantic model
        return item.station, item.iq
    raise InputError(where, item, 'an object {"station": "<id>", "iq": [[I, Q], ...] or base64}', "ragged_iq")


def _check_stations(stations: list[object], contract: Contract, field: str, item: str) -> list[str]:
    """The station ids, once known, distinct and enough.

    `item` formats one entry's field name from its index.
    """
    known = contract.receiver_ids
    seen: dict[str, None] = {}  # the ids in order
    for i, station in enumerate(stations):
        if not isinstance(station, str) or station not in known:
            raise InputError(item.format(i), station, f"one of {', '.join(known)}", "unknown_station")
        if station in seen:
            raise InputError(item.format(i), station, "each station at most once", "duplicate_station")
        seen[station] = None
    if len(seen) < contract.min_receivers:
        raise InputError(
            field,
            f"{len(seen)} receivers",
            f"at least {contract.min_receivers} distinct receivers",
            "too_few_receivers",
        )
    return list(seen)


def _check_count(n: int, max_samples: int, contract: Contract, where: str) -> None:
    low = contract.features.min_samples
    if n < low:
        raise InputError(
            where, f"{n} samples", f"at least {low} IQ samples (one STFT frame)", "too_few_samples"
        )
    if n > max_samples:
        raise InputError(
            where, f"{n} samples", f"at most {max_samples} IQ samples per receiver", "too_many_samples"
        )


def _from_pairs(data: object, max_samples: int, contract: Contract, where: str) -> _Decoded:
    """JSON [[I, Q], ...] ADC counts -> complex64 full scale (and the counts, when integers).

    `data` is the parsed lists, or an (n, 2) array of numbers (`heimdall.json_body`
    reads pair lists straight into one).
    """
    if isinstance(data, np.ndarray):
        return _from_pair_array(data, max_samples, contract, where)
    if not isinstance(data, list | tuple):
        raise InputError(where, data, "a list of [I, Q] pairs or a base64 string", "ragged_iq")
    _check_count(len(data), max_samples, contract, where)
    # Three C-level passes over the pairs (lengths, element types, values) are cheaper
    # than building an array from the lists, and strict: bools, strings and None are
    # refused, not coerced.
    try:
        ragged = set(map(len, data)) != {2}
    except TypeError:  # an element without a length: a number where a pair belongs
        ragged = True
    if ragged:
        bad = next(p for p in data if not isinstance(p, list | tuple) or len(p) != 2)
        raise InputError(where, bad, "a list of [I, Q] pairs of numbers", "ragged_iq")
    types = set(map(type, chain.from_iterable(data)))
    if types & {list, tuple}:
        bad = next(p for p in data if any(isinstance(x, list | tuple) for x in p))
        raise InputError(where, bad, "a list of [I, Q] pairs of numbers", "ragged_iq")
    if not types <= {int, float}:
        bad = next(t for t in types if t not in (int, float))
        raise InputError(where, bad.__name__, "[I, Q] pairs of numbers (int16 ADC counts)", "not_numeric")
    try:
        values = np.fromiter(chain.from_iterable(data), dtype=np.float64, count=2 * len(data))
    except OverflowError as exc:  # an integer beyond float64
        raise InputError(where, "an integer too large", "int16 ADC counts", "out_of_range") from exc
    return _from_counts(values, where, counts_known=float not in types)


def _from_pair_array(data: np.ndarray, max_samples: int, contract: Contract, where: str) -> _Decoded:
    if data.ndim != 2 or data.shape[1] != 2 or data.dtype.kind not in "iuf":
        raise InputError(
            where,
            f"a {data.dtype} array of shape {data.shape}",
            "a list of [I, Q] pairs of numbers",
            "ragged_iq",
        )
    _check_count(len(data), max_samples, contract, where)
    # Whether the values are whole counts is left to `_canonical`, which checks it for hashing.
    return _from_counts(data.reshape(-1).astype(np.float64, copy=False), where, counts_known=False)


def _from_counts(values: np.ndarray, where: str, counts_known: bool) -> _Decoded:
    """float64 interleaved ADC counts -> complex64 full scale (and the int16 counts, if `counts_known`)."""
    _check_range(values, _INT16_MIN, _INT16_MAX, where, "int16 ADC counts")
    counts = values.astype("<i2") if counts_known else None
    interleaved = values.astype(np.float32)
    interleaved *= _SCALE
    return _complex(interleaved), counts


def _from_base64(text: str, encoding: str, max_samples: int, contract: Contract, where: str) -> bytes:
    """A receiver's base64 string -> its wire bytes: a whole number of samples, within the limits."""
    per_sample = ENCODINGS[encoding]
    # Refuse oversize strings before decoding them (4 base64 characters carry 3 bytes).
    if len(text) > 4 * -(-max_samples * per_sample // 3):
        _check_count(len(text) * 3 // 4 // per_sample, max_samples, contract, where)
    try:
        # pybase64: SIMD decoding, an order of magnitude cheaper than the standard library
        raw = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            where, text, f"standard base64 of little-endian {encoding} I/Q", "bad_base64"
        ) from None
    if len(raw) % per_sample:
        raise InputError(
            where,
            f"{len(raw)} bytes",
            f"a multiple of {per_sample} bytes (one {encoding} I/Q sample)",
            "odd_length",
        )
    _check_count(len(raw) // per_sample, max_samples, contract, where)
    return raw


def _from_bytes(
    wire: Mapping[str, bytes | memoryview], encoding: str, places: Mapping[str, str]
) -> dict[str, _Decoded]:
    """Receivers' interleaved little-endian I/Q, each a whole number of samples -> complex64 full scale.

    int16 receivers are converted as one array (a numpy call per step, not per
    receiver); complex64 ones one by one, so a bad value is refused with
    its receiver's field name from `places`.
    """
    if not wire:
        return {}
    if encoding == "int16":
        counts = np.frombuffer(b"".join(wire.values()), dtype="<i2")
        interleaved = counts.astype(np.float32)
        interleaved *= _SCALE
        decoded: dict[str, _Decoded] = {}
        start = 0
        for station, raw in wire.items():
            stop = start + len(raw) // 2
            # Integers: no -0.0 for `_complex` to clear.
            decoded[station] = interleaved[start:stop].view(np.complex64), counts[start:stop]
            start = stop
        return decoded
    decoded = {}
    for station, raw in wire.items():
        values = np.frombuffer(raw, dtype="<f4")
        _check_range(values, -1.0, 1.0, places[station], "complex64 full-scale units")
        decoded[station] = _complex(values.astype(np.float32)), None  # astype copies: the buffer is not ours
    return decoded


def _check_range(values: np.ndarray, low: float, high: float, where: str, units: str) -> None:
    """Vectorized finite + range check; the offending sample is located only on failure."""
    lo, hi = values.min(), values.max()  # NaN propagates to both, failing the comparison
    if lo >= low and hi <= high:
        return
    flat = values.T.reshape(-1) if values.ndim == 2 and values.shape[0] == 2 else values.reshape(-1)
    finite = np.isfinite(flat)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise InputError(where, f"{flat[k]} at sample {k // 2}", f"finite numbers ({units})", "non_finite")
    k = int(np.flatnonzero((flat < low) | (flat > high))[0])
    raise InputError(
        where, f"{flat[k]} at sample {k // 2}", f"values in [{low}, {high}] ({units})", "out_of_range"
    )


def _complex(interleaved: np.ndarray) -> np.ndarray:
    """float32 (2n,) interleaved I/Q -> complex64 (n,), with -0.0 made +0.0 so equal captures hash equal."""
    interleaved += np.float32(0.0)
    return interleaved.reshape(-1).view(np.complex64)


def _as_counts(iq: np.ndarray) -> np.ndarray | None:
    """The int16 ADC counts behind complex64 full-scale samples, if they are exactly counts / 32768."""
    scaled = iq.view(np.float32) * np.float32(INT16_FULL_SCALE)  # exact: a power of two
    if scaled.max() <= _INT16_MAX and np.array_equal(np.rint(scaled), scaled):
        return scaled.astype("<i2")
    return None


def _canonical(decoded: dict[str, _Decoded], contract: Contract) -> CaptureSet:
    """Order by contract, freeze the arrays, digest each receiver's index, length and samples.

    The digest covers the decoded values, not the wire bytes. Samples that are
    exactly int16 counts / 32768 (every WebSDR capture) are hashed as their
    16-bit counts, half the bytes of complex64: hashing is a large share of a
    binary request's decode cost. A tag byte keeps the two encodings apart.
    BLAKE3 hashes each receiver's samples whole (several times faster than blake2b;
    fed in pieces, it loses its SIMD speed) and then the receivers' headers and
    digests (`make bench` times decoding per form).
    """
    parts = [_DIGEST_PERSON]
    ordered = {}
    for index, station in enumerate(contract.receiver_ids):
        if station not in decoded:
            continue
        samples, counts = decoded[station]
        samples.flags.writeable = False
        if counts is None:
            counts = _as_counts(samples)
        parts.append(_HEADER.pack(index, samples.size, counts is None))
        parts.append(blake3((samples if counts is None else counts).data.cast("B")).digest())
        ordered[station] = samples
    digest = blake3(b"".join(parts)).digest(16)
    return CaptureSet(iq=ordered, digest=digest, samples=sum(a.size for a in ordered.values()))
