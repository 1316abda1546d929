"""Property-based tests of the decoders (hypothesis).

Whatever a client sends, `decode_captures` and `decode_octets` return a valid
`CaptureSet` or raise `InputError`; nothing else escapes. The same int16
capture decodes to the same samples and digest in every wire form, and int16
counts survive decoding exactly.
"""

from __future__ import annotations

import base64

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from heimdall.contract.document import Contract
from heimdall.contract.features import INT16_FULL_SCALE
from heimdall.serving.decode import CaptureSet, decode_captures, decode_octets
from heimdall.serving.errors import InputError

CONTRACT = Contract()
IDS = CONTRACT.receiver_ids
LOW = CONTRACT.features.min_samples
MAX = LOW + 64  # a small cap, so that "too many samples" is as reachable as "too few"

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
)
stations = st.sampled_from(IDS) | st.text(max_size=8) | json_values
sizes = st.integers(LOW, MAX)  # samples per receiver the decoders accept
lengths = st.integers(LOW - 1, MAX + 1)  # and one beyond either end
counts = sizes.flatmap(lambda n: arrays("<i2", (n, 2)))  # int16 ADC counts, (samples, 2)
counts_near_limits = lengths.flatmap(lambda n: arrays("<i2", (n, 2)))
# Full-scale float32: mostly in range, sometimes NaN, infinite or out of range.
full_scale = sizes.flatmap(
    lambda n: arrays("<f4", (n, 2), elements=st.floats(-1, 1, width=32) | st.floats(width=32))
)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


@st.composite
def encodings(draw) -> object:
    return draw(json_values if draw(st.integers(0, 5)) == 5 else st.sampled_from(["int16", "complex64"]))


@st.composite
def spoiled_pairs(draw) -> list:
    """[I, Q] counts with a few entries replaced by anything JSON can carry."""
    pairs = draw(counts_near_limits).tolist()
    junk = json_values | st.lists(json_values, min_size=2, max_size=2) | st.tuples(st.floats(), st.floats())
    for _ in range(draw(st.integers(1, 3))):
        pairs[draw(st.integers(0, len(pairs) - 1))] = draw(junk)
    return pairs


any_iq = st.one_of(
    json_values,
    spoiled_pairs(),
    counts_near_limits.map(b64),
    full_scale.map(b64),
    st.binary(max_size=4 * MAX).map(lambda raw: base64.b64encode(raw).decode()),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-_é", max_size=64),
)


def iq_in(encoding: object) -> st.SearchStrategy:
    """IQ that a client would send with `encoding`: [I, Q] lists or base64 of that encoding."""
    as_lists = counts.map(np.ndarray.tolist) | counts.map(lambda c: c.astype(float).tolist())
    return as_lists | (full_scale if encoding == "complex64" else counts).map(b64)


@st.composite
def capture_requests(draw) -> tuple[object, object]:
    """Well-formed capture lists with at most one thing spoiled, or anything at all."""
    encoding = draw(encodings())
    if draw(st.integers(0, 7)) == 7:
        return draw(json_values), encoding
    chosen = list(draw(st.permutations(IDS)))[: 5 - draw(st.integers(0, 5))]
    items = [
        {"station": s, "iq": draw(iq_in(encoding))} if draw(st.booleans()) else [s, draw(iq_in(encoding))]
        for s in chosen
    ]
    if items:
        i = draw(st.integers(0, len(items) - 1))
        spoil = draw(st.sampled_from(["nothing", "station", "iq", "size", "item"]))
        if spoil == "station":
            items[i] = [draw(stations), draw(iq_in(encoding))]
        elif spoil == "iq":
            items[i] = {"station": chosen[i], "iq": draw(any_iq)}
        elif spoil == "size":
            items[i] = {"station": chosen[i], "iq": draw(st.sampled_from([LOW - 1, MAX + 1])) * [[0, 0]]}
        elif spoil == "item":
            items[i] = draw(json_values)
    return items, encoding


def sent_stations(captures: list) -> list:
    return [item["station"] if isinstance(item, dict) else item[0] for item in captures]


def assert_valid(cs: CaptureSet, sent: list, encoding: str) -> None:
    assert encoding in ("int16", "complex64")
    assert isinstance(cs, CaptureSet)
    assert sorted(cs.iq) == sorted(sent) and len(cs.iq) >= CONTRACT.min_receivers
    assert list(cs.iq) == [s for s in IDS if s in cs.iq]  # contract order
    for samples in cs.iq.values():
        assert samples.dtype == np.complex64 and samples.ndim == 1 and LOW <= samples.size <= MAX
        assert not samples.flags.writeable
        parts = samples.view(np.float32)
        assert np.isfinite(parts).all() and np.abs(parts).max() <= 1.0
    assert cs.samples == sum(s.size for s in cs.iq.values())
    assert isinstance(cs.digest, bytes) and len(cs.digest) == 16


# A pair that is a two-key object, before a pair holding a list, once escaped as KeyError.
@example(
    request=(
        [
            {"station": "giaveno", "iq": [{"a": 1, "b": 2}, [[1], 2]] + [[1, 2]] * LOW},
            {"station": "torino", "iq": [[1, 2]] * LOW},
            {"station": "genova", "iq": [[1, 2]] * LOW},
        ],
        "int16",
    )
)
@given(request=capture_requests())
@settings(max_examples=400)
def test_captures_decode_or_refuse(request):
    captures, encoding = request
    try:
        cs = decode_captures(captures, encoding, CONTRACT, MAX)
    except InputError as err:
        assert err.field and err.expected and err.reason
        return
    assert_valid(cs, sent_stations(captures), encoding)


@st.composite
def octet_requests(draw) -> tuple[bytes, object, object]:
    chosen = list(draw(st.permutations(IDS)))[: 5 - draw(st.integers(0, 5))]
    if draw(st.integers(0, 3)) == 3:
        chosen = draw(st.lists(stations, max_size=5) | stations)
    encoding = draw(encodings())
    receivers = len(chosen) if isinstance(chosen, list) else 1
    n = draw(lengths)
    if encoding == "complex64":
        elements = st.floats(-1, 1, width=32) | st.floats(width=32)
        body = draw(arrays("<f4", 2 * n * receivers, elements=elements)).tobytes()
    else:
        body = draw(arrays("<i2", 2 * n * receivers)).tobytes()
    body = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    return body + draw(st.binary(max_size=9)), chosen, encoding


@given(octet_requests())
@settings(max_examples=300)
def test_octets_decode_or_refuse(request):
    body, chosen, encoding = request
    try:
        cs = decode_octets(body, chosen, encoding, CONTRACT, MAX)
    except InputError as err:
        assert err.field and err.expected and err.reason
        return
    assert_valid(cs, list(chosen), encoding)


@given(
    counts=st.integers(CONTRACT.min_receivers, len(IDS)).flatmap(
        lambda k: st.integers(LOW, MAX).flatmap(lambda n: arrays("<i2", (k, n, 2)))
    ),
    order=st.permutations(IDS),
)
@settings(max_examples=60)
def test_int16_capture_decodes_the_same_in_every_form(counts, order):
    chosen = order[: len(counts)]
    captured = list(zip(chosen, counts, strict=True))
    forms = [
        decode_captures([{"station": s, "iq": c.tolist()} for s, c in captured], "int16", CONTRACT, MAX),
        decode_captures([[s, b64(c)] for s, c in captured], "int16", CONTRACT, MAX),
        decode_octets(counts.tobytes(), chosen, "int16", CONTRACT, MAX),
        # the same values as JSON floats, and as complex64 full scale
        decode_captures([[s, c.astype(float).tolist()] for s, c in captured], "int16", CONTRACT, MAX),
        decode_captures(
            [[s, b64((c / INT16_FULL_SCALE).astype("<f4"))] for s, c in captured], "complex64", CONTRACT, MAX
        ),
    ]
    first = forms[0]
    for s, c in captured:  # exact: counts * 2**-15 in float32, and back
        scaled = first.iq[s].view(np.float32) * np.float32(INT16_FULL_SCALE)
        np.testing.assert_array_equal(scaled, c.reshape(-1).astype(np.float32))
    for other in forms[1:]:
        assert other.digest == first.digest
        assert list(other.iq) == list(first.iq)
        for s in first.iq:
            np.testing.assert_array_equal(other.iq[s], first.iq[s])
