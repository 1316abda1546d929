"""`heimdall.serving.json_body.read` gives what `json.loads` gives, with pair lists under `iq` as arrays,
and refuses by shape, naming the field, what the reader could not take or would amplify."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from heimdall.serving.errors import InputError
from heimdall.serving.json_body import MAX_VALUES, read

# Exactly representable in float64, so a pair list read into an array compares equal to its lists.
numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
# NUL is left out: a document holding one is refused (the last tests).
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
@example(iq=[], other=None)
@given(iq=iq_values, other=json_values)
@settings(max_examples=300)
def test_read_agrees_with_json_loads_and_arrays_only_pair_lists(iq, other):
    document = {
        "captures": [{"station": "torino", "iq": iq}],
        "other": other,
    }
    body = json.dumps(document).encode()
    if isinstance(iq, list) and iq and not is_pair_list(iq):
        with pytest.raises(InputError) as refused:
            read(body)
        assert refused.value.field == "captures[0].iq" and refused.value.reason == "ragged_iq"
        return
    got = read(body)
    assert as_lists(got) == json.loads(body)
    assert isinstance(got["captures"][0]["iq"], np.ndarray) == is_pair_list(iq)
    if is_pair_list(iq):
        assert got["captures"][0]["iq"].dtype == np.float64
        assert got["captures"][0]["iq"].shape == (len(iq), 2)
    assert not isinstance(got["other"], np.ndarray)  # only members named `iq` become arrays


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"{not json", "body", "malformed_json"),
        (b'{"iq": [[1, 2]]} trailing', "body", "malformed_json"),
        (b'{"iq": "AAAA", "x": NaN}', "body", "malformed_json"),
        (b"\xff", "body", "malformed_json"),
        (b"", "body", "malformed_json"),
        (b'{"iq": [[1, 1e400]]}', "body", "malformed_json"),
        (b'{"n": 99999999999999999999999}', "body", "malformed_json"),
        (b'{"iq": "AAAA", "a\\u0000b": 1}', "body", "nul_escape"),
        (b'{"a": {"iq": "AAAA", "iq": [[1, 2]]}}', "a", "duplicate_key"),
        (b'{"captures": [{"station": "a", "iq": [[], []]}]}', "captures[0].iq", "ragged_iq"),
        (b'{"captures": [' + b"{}," * MAX_VALUES + b"{}]}", "captures", "too_many_values"),
        (b'{"x": [[' + b"1," * MAX_VALUES + b"1]]}", "x[0]", "too_many_values"),
    ],
    ids=[
        "malformed",
        "trailing",
        "NaN token",
        "not UTF-8",
        "empty",
        "float overflow",
        "integer beyond 64 bits",
        "escaped NUL",
        "duplicate key",
        "iq not pairs",
        "too many objects",
        "too many numbers",
    ],
)
def test_what_the_reader_does_not_take_is_refused_naming_the_field(body, field, reason):
    with pytest.raises(InputError) as refused:
        read(body)
    assert (refused.value.field, refused.value.reason) == (field, reason)


def test_a_batch_at_its_limits_is_within_the_value_budget():
    capture = {"station": "torino", "iq": "AAAA"}
    batch = {"items": [{"captures": [capture] * 7, "encoding": "int16"}] * 100, "use_cache": True}
    assert read(json.dumps(batch).encode()) == batch
