"""`heimdall.serving.json_body.read` gives what `json.loads` gives, with pair lists under `iq` as arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from heimdall.serving.json_body import read

# Exactly representable in float64, so a pair list read into an array compares equal to its lists.
numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
# NUL is left out: a document holding one is left to the ordinary reader (the last test).
text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=3),
)
pair_lists = st.lists(st.tuples(numbers, numbers).map(list), min_size=1, max_size=20)
iq_values = (
    pair_lists
    | json_values
    | pair_lists.map(lambda p: [[x] for x in p])
    | pair_lists.map(lambda p: p[:-1] + [p[-1] + [0]])
)


def is_pair_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(p, list) and len(p) == 2 and all(type(x) in (int, float) for x in p) for p in value
        )
    )


def as_lists(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_lists(v) for v in value]
    return value


@example(iq=[[1, 2, 3], [4]], other=None)  # as many numbers as n pairs, wrongly nested
@example(iq=[[[1, 2]], [[3, 4]]], other=None)
@example(iq=[[1, True], [3, 4]], other=None)
@example(iq=[[1.5, -2e3], [0, -0.0]], other=None)
@given(iq=iq_values, other=json_values)
@settings(max_examples=300)
def test_read_agrees_with_json_loads_and_arrays_only_pair_lists(iq, other):
    document = {
        "captures": [{"station": "torino", "iq": iq}],
        "iq": iq,
        "other": other,
        "nested": [{"iq": iq}],
    }
    body = json.dumps(document).encode()
    got = read(body)
    assert as_lists(got) == json.loads(body)
    for where in (got["captures"][0]["iq"], got["iq"], got["nested"][0]["iq"]):
        assert isinstance(where, np.ndarray) == is_pair_list(iq)
        if isinstance(where, np.ndarray):
            assert where.dtype == np.float64 and where.shape == (len(iq), 2)
    assert not isinstance(got["other"], np.ndarray)  # only members named `iq` become arrays


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"iq": [[1, 2]]} trailing',
        b'{"iq": "AAAA"} trailing',
        b'{"iq": "AAAA", "x": NaN}',
        b"\xff",
    ],
    ids=["malformed", "trailing after pairs", "trailing after base64", "NaN token", "not UTF-8"],
)
def test_documents_no_reader_takes_are_left_to_the_ordinary_reader(body):
    assert read(body) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"iq": [[1, 1e400]]}',
        b'{"iq": [[1, 2]], "n": 99999999999999999999999}',
        b'{"iq": [[1, 2]], "a\\u0000b": 1}',
    ],
    ids=["float overflow", "integer beyond 64 bits", "escaped NUL"],
)
def test_documents_with_pair_lists_that_simdjson_cannot_take_are_left_to_the_ordinary_reader(body):
    assert read(body) is None


@pytest.mark.parametrize(
    "body",
    [b'{"iq": "AAAA", "n": 99999999999999999999999}', b'{"iq": "AAAA", "a\\u0000b": 1}', b"[1, {}]"],
    ids=["integer beyond 64 bits", "escaped NUL", "no iq"],
)
def test_documents_without_pair_lists_read_as_the_standard_library_reads_them(body):
    assert read(body) == json.loads(body)
