"""Request decoding: the three wire forms agree, and every bad input is a named 400."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from heimdall.contract.document import Contract
from heimdall.contract.features import iq_from_int16
from heimdall.serving.decode import CaptureSet, decode_captures, decode_octets
from heimdall.serving.errors import InputError

CONTRACT = Contract()
IDS = CONTRACT.receiver_ids
MAX = 8192
N = 512


def counts(seed: int, n: int = N, receivers: int = 3) -> np.ndarray:
    """int16 ADC counts (receivers, n, 2), full range including both extremes."""
    c = np.random.default_rng(seed).integers(-32768, 32768, size=(receivers, n, 2)).astype(np.int16)
    c[0, 0] = (-32768, 32767)
    return c


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


def as_pairs(c: np.ndarray, stations=IDS) -> list[tuple[str, object]]:
    return [(s, x.tolist()) for s, x in zip(stations, c, strict=False)]


def refusal(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    return info.value


def test_three_forms_give_identical_iq_and_digest():
    c = counts(1)
    stations = ("torino", "giaveno", "genova")  # not contract order on purpose
    forms = [
        decode_captures(as_pairs(c, stations), "int16", CONTRACT, MAX),
        decode_captures(
            [(s, b64(x.astype("<i2"))) for s, x in zip(stations, c, strict=True)], "int16", CONTRACT, MAX
        ),
        decode_captures(
            [{"station": s, "iq": b64((x / 32768).astype("<f4"))} for s, x in zip(stations, c, strict=True)],
            "complex64",
            CONTRACT,
            MAX,
        ),
        decode_octets(c.astype("<i2").tobytes(), stations, "int16", CONTRACT, MAX),
        decode_octets((c / 32768).astype("<f4").tobytes(), stations, "complex64", CONTRACT, MAX),
        decode_captures(
            [(s, x.astype(float).tolist()) for s, x in zip(stations, c, strict=True)], "int16", CONTRACT, MAX
        ),
    ]
    first = forms[0]
    assert list(first.iq) == ["giaveno", "torino", "genova"]  # contract order
    assert first.samples == 3 * N and len(first.digest) == 16
    for other in forms[1:]:
        assert other.digest == first.digest
        assert list(other.iq) == list(first.iq)
        for s in first.iq:
            assert other.iq[s].dtype == np.complex64
            np.testing.assert_array_equal(other.iq[s], first.iq[s])


def test_int16_scaling_is_exact():
    c = counts(2)
    cs = decode_captures(as_pairs(c), "int16", CONTRACT, MAX)
    for s, x in zip(IDS, c, strict=False):
        expected = x[:, 0].astype(np.float64) / 32768 + 1j * x[:, 1].astype(np.float64) / 32768
        np.testing.assert_array_equal(cs.iq[s].astype(np.complex128), expected)
        np.testing.assert_array_equal(cs.iq[s], iq_from_int16(x.reshape(-1)))
    assert cs.iq["giaveno"][0] == np.complex64(-1 + 32767j / 32768)


def test_digest_depends_on_samples_station_and_length():
    c = counts(3)
    base = decode_captures(as_pairs(c), "int16", CONTRACT, MAX).digest
    changed = c.copy()
    changed[2, 100, 1] ^= 1
    assert decode_captures(as_pairs(changed), "int16", CONTRACT, MAX).digest != base
    assert decode_captures(as_pairs(c, IDS[1:]), "int16", CONTRACT, MAX).digest != base
    assert decode_captures(as_pairs(c[:, :-1]), "int16", CONTRACT, MAX).digest != base
    # Not int16-representable: hashed as complex64, still deterministic and distinct.
    floats = [(s, (x * 0.5 + 0.25).tolist()) for s, x in zip(IDS, c.astype(float), strict=False)]
    d1 = decode_captures(floats, "int16", CONTRACT, MAX).digest
    assert d1 == decode_captures(floats, "int16", CONTRACT, MAX).digest and d1 != base


def test_negative_zero_hashes_like_zero():
    c = np.zeros((3, N, 2))
    plus = decode_captures(as_pairs(c), "int16", CONTRACT, MAX)
    minus = decode_captures(as_pairs(-c), "int16", CONTRACT, MAX)
    assert plus.digest == minus.digest


def test_decoded_arrays_are_read_only():
    cs = decode_captures(as_pairs(counts(4)), "int16", CONTRACT, MAX)
    with pytest.raises(ValueError):
        cs.iq["giaveno"][0] = 0
    assert isinstance(cs, CaptureSet)


def _short(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) < 30 else "_"


def good() -> list[list]:
    return [[s, x] for s, x in as_pairs(counts(5))]


def mutate(index: int, iq: object) -> list[list]:
    captures = good()
    captures[index][1] = iq
    return captures


@pytest.mark.parametrize(
    ("captures", "encoding", "field", "reason"),
    [
        ([], "int16", "captures", "empty"),
        ({"giaveno": []}, "int16", "captures", "ragged_iq"),
        ("giaveno", "int16", "captures", "ragged_iq"),
        (good()[:2] + [["nowhere", []]], "int16", "captures[2].station", "unknown_station"),
        (good()[:2] + [[7, []]], "int16", "captures[2].station", "unknown_station"),
        (good() + [["torino", []]], "int16", "captures[3].station", "duplicate_station"),
        (good()[:2], "int16", "captures", "too_few_receivers"),
        (good(), "int8", "encoding", "bad_encoding"),
        (good()[:2] + ["torino"], "int16", "captures[2]", "ragged_iq"),
        (mutate(1, 42), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, [1, 2] * N), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, [[1, 2, 3]] * N), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, [[1, 2]] * (N - 1) + [[1]]), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, [[[1], [2]]] * N), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, [[1, [2]]] * N), "int16", "captures[1].iq", "ragged_iq"),
        (mutate(1, ["12"] * N), "int16", "captures[1].iq", "not_numeric"),
        (mutate(1, [["1", "2"]] * N), "int16", "captures[1].iq", "not_numeric"),
        (mutate(1, [[None, 2]] * N), "int16", "captures[1].iq", "not_numeric"),
        (mutate(1, [[True, False]] * N), "int16", "captures[1].iq", "not_numeric"),
        (mutate(1, [[1, 2]] * (N - 1) + [[float("nan"), 0]]), "int16", "captures[1].iq", "non_finite"),
        (mutate(1, [[1, 2]] * (N - 1) + [[0, float("-inf")]]), "int16", "captures[1].iq", "non_finite"),
        (mutate(2, [[1, 2]] * (N - 1) + [[32768, 0]]), "int16", "captures[2].iq", "out_of_range"),
        (mutate(2, [[-32768.5, 2]] * N), "int16", "captures[2].iq", "out_of_range"),
        (mutate(2, [[2**70, 2]] * N), "int16", "captures[2].iq", "out_of_range"),
        (mutate(2, [[10**400, 2]] * N), "int16", "captures[2].iq", "out_of_range"),
        (mutate(0, [[1, 2]] * 255), "int16", "captures[0].iq", "too_few_samples"),
        (mutate(0, [[1, 2]] * (MAX + 1)), "int16", "captures[0].iq", "too_many_samples"),
        (mutate(0, b64(np.zeros(2 * 255, "<i2"))), "int16", "captures[0].iq", "too_few_samples"),
        (mutate(0, b64(np.zeros(2 * MAX + 2, "<i2"))), "int16", "captures[0].iq", "too_many_samples"),
        (mutate(0, "A" * 10**6), "int16", "captures[0].iq", "too_many_samples"),
        (mutate(0, b64(np.zeros(2 * N + 1, "<i2"))), "int16", "captures[0].iq", "odd_length"),
        (mutate(0, b64(np.zeros(2 * N + 2, "<i2"))), "complex64", "captures[0].iq", "odd_length"),
        (mutate(0, "not base64!"), "int16", "captures[0].iq", "bad_base64"),
        (mutate(0, "AAA"), "int16", "captures[0].iq", "bad_base64"),
        (mutate(0, "AAAA\n"), "int16", "captures[0].iq", "bad_base64"),
        (mutate(0, "é" * 8), "int16", "captures[0].iq", "bad_base64"),
        (mutate(0, b64(np.full(2 * N, np.nan, "<f4"))), "complex64", "captures[0].iq", "non_finite"),
        (mutate(0, b64(np.full(2 * N, 1.5, "<f4"))), "complex64", "captures[0].iq", "out_of_range"),
    ],
    ids=_short,
)
def test_refusals_name_field_and_reason(captures, encoding, field, reason):
    err = refusal(decode_captures, captures, encoding, CONTRACT, MAX)
    assert (err.field, err.reason) == (field, reason)
    assert err.expected and len(err.received) <= 80
    assert field in str(err) and "expected" in str(err)


def test_unknown_station_lists_the_known_ones():
    err = refusal(decode_captures, good()[:2] + [["nowhere", []]], "int16", CONTRACT, MAX)
    assert all(s in err.expected for s in IDS)
    assert "nowhere" in err.received


def test_non_finite_names_the_sample():
    err = refusal(decode_captures, mutate(1, [[1, 2]] * 300 + [[0, float("nan")]]), "int16", CONTRACT, MAX)
    assert "sample 300" in err.received


def test_custom_field_name():
    err = refusal(decode_captures, mutate(1, 42), "int16", CONTRACT, MAX, field="items[4].captures")
    assert err.field == "items[4].captures[1].iq"


@pytest.mark.parametrize(
    ("body", "stations", "encoding", "field", "reason"),
    [
        (b"", IDS[:3], "int16", "body", "empty"),
        (bytes(4 * N * 3), [], "int16", "stations", "empty"),
        (bytes(4 * N * 3), "giaveno", "int16", "stations", "empty"),
        (bytes(4 * N * 3), IDS[:2] + ("mars",), "int16", "stations[2]", "unknown_station"),
        (bytes(4 * N * 3), IDS[:2] + ("giaveno",), "int16", "stations[2]", "duplicate_station"),
        (bytes(4 * N * 2), IDS[:2], "int16", "stations", "too_few_receivers"),
        (bytes(4 * N * 3), IDS[:3], "float16", "encoding", "bad_encoding"),
        (bytes(4 * N * 3 + 2), IDS[:3], "int16", "body", "odd_length"),
        (bytes(4 * (N + 1) * 3), IDS[:3], "complex64", "body", "odd_length"),
        (bytes(4 * 100 * 3), IDS[:3], "int16", "body", "too_few_samples"),
        (bytes(4 * (MAX + 1) * 3), IDS[:3], "int16", "body", "too_many_samples"),
        (np.full(2 * N * 3, np.inf, "<f4").tobytes(), IDS[:3], "complex64", f"body[{IDS[0]}]", "non_finite"),
    ],
    ids=_short,
)
def test_octet_refusals(body, stations, encoding, field, reason):
    err = refusal(decode_octets, body, stations, encoding, CONTRACT, MAX)
    assert (err.field, err.reason) == (field, reason)
