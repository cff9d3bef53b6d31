"""The unknown-field policy of ``http.body``: unknown keys at any depth are dropped and named in
one warning; known fields stay strict; ``null`` for an optional top-level field is "not given"."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel, ConfigDict

from deepseek_serve.errors import InvalidRequestError
from deepseek_serve.http.body import validate_lenient


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Inner(Strict):
    a: int = 0


class Other(Strict):
    b: str


class Outer(Strict):
    x: int = 1
    inner: Inner | None = None
    items: list[Inner] = []
    either: Inner | Other | None = None
    flag: bool = False


def test_unknown_keys_dropped_at_any_depth_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = {"x": 2, "zz": 1, "inner": {"a": 3, "yy": 2}, "items": [{"a": 1}, {"a": 2, "q": 0}]}
    with caplog.at_level(logging.WARNING):
        parsed = validate_lenient(Outer, data, "/p")
    assert parsed == Outer(x=2, inner=Inner(a=3), items=[Inner(a=1), Inner(a=2)])
    (record,) = caplog.records
    assert (
        record.getMessage()
        == "/p: fields present in the request but ignored: inner.yy, items[1].q, zz"
    )
    assert data["zz"] == 1  # the caller's data is left as it was


def test_unknown_key_inside_a_union_member() -> None:
    assert validate_lenient(Outer, {"either": {"b": "s", "extra": 1}}).either == Other(b="s")
    assert validate_lenient(Outer, {"either": {"a": 4, "extra": 1}}).either == Inner(a=4)


def test_known_fields_stay_strict_beside_unknown_ones() -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_lenient(Outer, {"x": "2", "unknown": True})
    assert info.value.param == "x"
    with pytest.raises(InvalidRequestError) as info:
        validate_lenient(Outer, {"inner": {"a": "no", "extra": 1}})
    assert info.value.param == "inner.a"


def test_null_is_not_given_for_optional_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert validate_lenient(Outer, {"x": None, "flag": None, "inner": None}) == Outer()
    assert not caplog.records  # a null is not an unknown field


def test_response_format_keeps_the_whitespace_switch_of_structured_outputs() -> None:
    from deepseek_serve.routes.openai.structured import (
        ResponseFormat,
        StructuredOutputs,
        structured_output,
    )

    schema = {"type": "object"}
    fmt = ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    )
    both = StructuredOutputs.model_validate({"json": schema, "disable_any_whitespace": True})
    got = structured_output(fmt, both)
    assert got is not None and got.kind == "json" and got.disable_any_whitespace
    got = structured_output(fmt, None)
    assert got is not None and not got.disable_any_whitespace


def test_dialects_that_ignore_unknown_fields_still_name_them_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """llama.cpp's and Ollama's bodies ignore what they do not know, as those servers do; the
    log still names it once per request, as for the OpenAI dialect."""
    from deepseek_serve.http.body import validate_lenient
    from deepseek_serve.routes.llama_cpp.protocol import InfillRequest
    from deepseek_serve.routes.ollama.protocol import GenerateRequest

    body = {
        "input_prefix": "x",
        "penalty_last_n": 64,  # llama.cpp's, not honoured here
        "input_extra": [{"filename": "a.py", "text": "", "time": 1, "mtime": 2}],
    }
    with caplog.at_level(logging.WARNING):
        validate_lenient(InfillRequest, body, "/infill")
    expected = "/infill: fields present in the request but ignored: input_extra[].mtime, "
    assert expected + "penalty_last_n" in caplog.text
    caplog.clear()
    body = {"model": "m", "prompt": "x", "options": {"num_ctx": 4096, "temperature": 0.1}}
    with caplog.at_level(logging.WARNING):
        validate_lenient(GenerateRequest, body, "/api/generate")
    assert caplog.text.count("ignored") == 1 and "options.num_ctx" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # everything known (llama.vim sends "time"): quiet
        validate_lenient(InfillRequest, {"input_prefix": "x", "input_extra": [
            {"filename": "a.py", "text": "", "time": 1}]}, "/infill")  # fmt: skip
    assert "ignored" not in caplog.text
