"""Decoding client JSON: nesting is measured before the decoder recurses, and every way the
decoder can fail is a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseek_serve.errors import InvalidRequestError
from deepseek_serve.http.client_json import MAX_JSON_DEPTH, decode_json, json_depth

TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ['"', "\\", "[", "]{", '\\"[', "}]"]
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=VALUES, ascii_only=st.booleans())
def test_json_depth_is_the_nesting_of_any_json_value(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert json_depth(raw) == depth(value)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 100_000,  # never closed: the decoder would still recurse
        b'{"prompt": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
    ],
)
def test_nesting_past_the_bound_is_a_400_before_decoding(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="nested deeper than") as info:
        decode_json(raw)
    assert info.value.code == "invalid_json"


def test_nesting_at_the_bound_decodes() -> None:
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert depth(decode_json(raw)) == MAX_JSON_DEPTH


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "max_tokens"),
        (b'{"a": {"b": [0, -' + b"1" * 5000 + b"]}}", "a.b[1]"),
        (b"[" + b"7" * 5000 + b"]", "[0]"),
    ],
)
def test_a_number_too_long_for_int_is_a_400_naming_where(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequestError, match="too many digits") as info:
        decode_json(raw)
    assert info.value.param == param
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "raw", [b"", b"{", b'{"a": "\\ud800"}', b"\xff", b'{"a": 1e99999}x', b"[1,]"]
)
def test_other_bad_json_is_a_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        decode_json(raw)
