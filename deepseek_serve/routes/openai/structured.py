"""Structured output requests: OpenAI's ``response_format`` (``json_object``, ``json_schema``) and
vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``, ``json_object``),
enforced by vLLM's own structured-output backend. As in vLLM, ``response_format`` wins when both
constrain the output."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepseek_serve.engine import StructuredOutput
from deepseek_serve.errors import InvalidRequestError


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class JsonSchemaSpec(_Strict):
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise InvalidRequestError(
                "response_format of type json_schema needs a json_schema object.",
                param="response_format.json_schema",
            )
        return self


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs``: exactly one constraint."""

    json_value: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = Field(None, min_length=1)
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = Field(None, min_length=1)
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    @field_validator("regex")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # vLLM refuses it with a plain ValueError from inside the engine call (a 500 there)
        if value is not None and "\x00" in value:
            raise ValueError("a regex must not contain a NUL character")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [k for k in _KINDS if getattr(self, _KINDS[k]) is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                "structured_outputs needs exactly one of json, regex, choice, grammar, "
                f"json_object; got {', '.join(given) or 'none'}.",
                param="structured_outputs",
            )
        return self

    def constraint(self) -> StructuredOutput:
        (kind,) = [k for k in _KINDS if getattr(self, _KINDS[k]) is not None]
        return StructuredOutput(kind, getattr(self, _KINDS[kind]), self.disable_any_whitespace)


# wire name -> attribute
_KINDS = {
    "json": "json_value",
    "regex": "regex",
    "choice": "choice",
    "grammar": "grammar",
    "json_object": "json_object",
}


def structured_output(
    response_format: ResponseFormat | None, structured: StructuredOutputs | None
) -> StructuredOutput | None:
    # vLLM's switch about whitespace applies to response_format's JSON too.
    compact = structured is not None and structured.disable_any_whitespace
    if response_format is not None and response_format.type == "json_object":
        return StructuredOutput("json_object", True, compact)
    if response_format is not None and response_format.json_schema is not None:
        return StructuredOutput("json", response_format.json_schema.json_schema, compact)
    return structured.constraint() if structured is not None else None
