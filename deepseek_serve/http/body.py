"""Reading a request body: JSON only, decoded and validated into a dialect's pydantic model, or
a 400 that names the bad parameter."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from deepseek_serve.errors import InvalidRequestError, UnsupportedMediaTypeError
from deepseek_serve.http.client_json import decode_json


class Body(BaseModel):
    """What every dialect's request body has for the opening checks: the model it names and
    the editor session it belongs to (an extension, see ``sessions``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str | None = None
    session_id: str | None = Field(None, description="extension: see http/sessions.py")


T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T]) -> T:
    """Read, decode and validate a JSON body, or raise a 400 naming the bad parameter."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {content_type or 'nothing'!r}."
        )
    raw = await request.body()
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None


def to_invalid_request(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors(include_url=False)[0]
    loc = [p for p in first["loc"] if not _is_union_tag(p)]
    param = _param_path(loc)
    if first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first["type"] == "missing":
        message = f"Missing required parameter: {param}"
    else:
        message = f"Invalid value for {param or 'body'}: {first['msg']}"
    return InvalidRequestError(message, param=param or None, code="invalid_value")


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tried union member into the location, e.g. ('prompt', 'list[int]', 0)
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _param_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
