"""Reading a request body: JSON only, decoded and validated into a dialect's pydantic model, or
a 400 that names the bad parameter.

Unknown fields are ignored, as vLLM does: editor plugins send fields of other servers' dialects
(``cache_prompt``, ``id_slot``, ``samplers`` ...) to every endpoint. Known fields keep strict
validation. The models still declare ``extra="forbid"``, so pydantic finds the unknown keys (at any
depth); ``parse_body`` drops them, logs their names once per request at warning level, and
validates what is left.
"""

from __future__ import annotations

import copy
import logging
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from deepseek_serve.errors import InvalidRequestError, UnsupportedMediaTypeError
from deepseek_serve.http.client_json import decode_json

logger = logging.getLogger(__name__)

# Each pass drops the unknown keys pydantic reported; nesting under unions can reveal more.
_MAX_PASSES = 4


class Body(BaseModel):
    """What every dialect's request body has for the opening checks: the model it names and
    the editor session it belongs to (an extension, see ``sessions``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    model: str | None = None
    session_id: str | None = Field(None, description="extension: see http/sessions.py")


T = TypeVar("T", bound=BaseModel)


async def parse_body(request: Request, model: type[T], *, any_content_type: bool = False) -> T:
    """Read, decode and validate a JSON body, or raise a 400 naming the bad parameter.
    ``any_content_type``: the body is JSON whatever the header says (Ollama's server reads it
    so, and ollama-rs sends no Content-Type at all)."""
    content_type = request.headers.get("content-type", "")
    if not any_content_type and content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise UnsupportedMediaTypeError(
            f"Content-Type must be application/json, got {content_type or 'nothing'!r}."
        )
    raw = await request.body()
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    return validate_lenient(model, data, request.url.path)


def validate_lenient(model: type[T], data: dict[str, Any], where: str = "") -> T:
    """``data`` validated into ``model`` with unknown keys dropped (and logged once)."""
    # OpenAI's optional parameters are nullable: ``"n": null`` means "not given" (SDKs and the
    # DeepSeek platform's own examples send nulls), even where our default is not None.
    fields = model.model_fields
    nulls = [
        k
        for k, v in data.items()
        if v is None
        and k in fields
        and not fields[k].is_required()
        and fields[k].default is not None
    ]
    if nulls:
        data = {k: v for k, v in data.items() if k not in nulls}
    ignored: list[str] = []
    for _ in range(_MAX_PASSES):
        try:
            parsed = model.model_validate(data)
        except ValidationError as exc:
            unknown = _unknown_keys(data, exc.errors(include_url=False))
            if not unknown:
                raise to_invalid_request(exc) from None
            data = _without(data, unknown)
            ignored.extend(_param_path(path) for path in unknown)
            continue
        ignored.extend(_quietly_ignored(model, data))
        if ignored:
            logger.warning(
                "%sfields present in the request but ignored: %s",
                f"{where}: " if where else "",
                ", ".join(sorted(set(ignored))),
            )
        return parsed
    raise InvalidRequestError("The body nests unknown fields too deeply.", code="invalid_value")


KeyPath = tuple[Any, ...]


def _quietly_ignored(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """The keys of ``data`` that models declaring ``extra="ignore"`` (the llama.cpp and Ollama
    dialects: their servers ignore what they do not know) dropped without a word: logged like
    the others. Nested bodies are followed through their fields (lists as ``name[]``)."""
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    known = {f.alias or name: f for name, f in fields.items()} | dict(fields)
    out = []
    for key, value in data.items():
        field = known.get(key)
        if field is None:
            if model.model_config.get("extra") == "ignore":
                out.append(f"{prefix}{key}")
            continue
        for sub, nested in _nested_models(field.annotation, value):
            out.extend(
                _quietly_ignored(
                    sub, nested, f"{prefix}{key}{'[]' if nested is not value else ''}."
                )
            )
    return out


def _nested_models(annotation: Any, value: Any) -> list[tuple[type[BaseModel], Any]]:
    """(model, value) pairs to follow for a field: its value, or each item of a list value,
    when the annotation names a pydantic model."""
    models = [
        t
        for t in (annotation, *typing.get_args(annotation))
        for t in (t, *typing.get_args(t))
        if isinstance(t, type) and issubclass(t, BaseModel)
    ]
    if not models:
        return []
    items = value if isinstance(value, list) else [value]
    return [(models[0], item) for item in items[:1] if isinstance(item, dict)]


def _split(data: Any, loc: KeyPath) -> tuple[KeyPath, KeyPath]:
    """An error location as (the path of keys and indices in ``data``, the union-member tags
    pydantic put in it: the parts ``data`` has no such key or index for)."""
    path: list[Any] = []
    tags: list[Any] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        else:
            tags.append((len(path), part))
    return tuple(path), tuple(tags)


def _unknown_keys(data: dict[str, Any], errors: list[Any]) -> list[KeyPath]:
    """Paths of the keys no model accepts. Under a union, a key counts only if every member
    that failed there refused it as extra: ``{"b": ...}`` is not unknown when one member has
    ``b``."""
    split = [(e["type"], *_split(data, e["loc"])) for e in errors]
    refused: dict[KeyPath, set[KeyPath]] = {}
    for kind, path, tags in split:
        if kind == "extra_forbidden" and path:
            refused.setdefault(path, set()).add(tags)
    unknown = []
    for path, refusing in refused.items():
        parent = path[:-1]
        members = {
            tags
            for _, other, tags in split
            if other[: len(parent)] == parent and len(tags) == len(next(iter(refusing)))
        }
        if members <= refusing:
            unknown.append(path)
    return unknown


def _without(data: dict[str, Any], paths: list[KeyPath]) -> dict[str, Any]:
    """A deep copy of ``data`` without the keys at ``paths``."""
    out = copy.deepcopy(data)
    for path in paths:
        node: Any = out
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return out


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


def _param_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
