"""Decoding client JSON: every way ``json.loads`` can fail on client bytes is a 400.

- Nesting: the C decoder recurses once per level and stops at the recursion limit with a
  ``RecursionError``; the depth is measured first, in C-speed passes, and a body nested deeper
  than ``MAX_JSON_DEPTH`` is refused before decoding.
- Numbers: ``int()`` refuses numbers of over 4300 digits (``sys.get_int_max_str_digits``) with a
  plain ``ValueError``; the 400 names where the number is.
- Bytes that are not UTF-8, and escaped lone UTF-16 surrogates (not text; they break tokenizers).
"""

from __future__ import annotations

import json
import operator
import re
import sys
from itertools import accumulate, count
from typing import Any

from deepseek_serve.errors import InvalidRequestError

# Deeper than any body of ours needs (a chat message's content parts are 5 levels down), and far
# below the depth where the C decoder runs into the recursion limit.
MAX_JSON_DEPTH = 64
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def decode_json(raw: bytes) -> Any:
    """``json.loads`` for client bytes: every way it can fail is a 400 ``invalid_json``."""
    openings = raw.count(b"[") + raw.count(b"{")
    if openings > MAX_JSON_DEPTH and json_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidRequestError(
            f"The body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels.",
            code="invalid_json",
        )
    try:
        data = json.loads(raw)
        if b"\\ud" in raw.lower():
            # JSON can escape lone UTF-16 surrogates: not text, and they break tokenizers.
            json.dumps(data, ensure_ascii=False).encode()
    except (UnicodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequestError(
            f"The body is not valid JSON: {exc}.", code="invalid_json"
        ) from exc
    except ValueError as exc:
        # int() refuses numbers of over 4300 digits (sys.get_int_max_str_digits) with a plain
        # ValueError; none of our parameters needs a fraction of that.
        param = _oversized_number(raw)
        raise InvalidRequestError(
            f"Invalid value for {param or 'body'}: a number with too many digits.",
            param=param,
            code="invalid_value",
        ) from exc
    return data


class _Oversized:
    pass


def _oversized_number(raw: bytes) -> str | None:
    """Where the number too long for ``int`` is (only run once decoding failed on it)."""
    limit = sys.get_int_max_str_digits() or 1 << 62

    def parse_int(text: str) -> int | _Oversized:
        return _Oversized() if len(text.lstrip("-")) > limit else int(text)

    try:
        data = json.loads(raw, parse_int=parse_int)
    except ValueError:
        return None
    path = _path_to(data, [])
    return _param_path(path) if path else None


def _path_to(value: Any, loc: list[Any]) -> list[Any] | None:
    if isinstance(value, _Oversized):
        return loc
    if isinstance(value, dict | list):
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            found = _path_to(item, [*loc, key])
            if found is not None:
                return found
    return None


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw``, found before decoding it (the decoder
    recurses once per level), in C-speed passes: strings (which may hold brackets) removed,
    then the running sum of +1 per opening and -1 per closing bracket. Exact for valid JSON;
    for invalid JSON at least the depth the decoder could reach before its error."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    # With steps of 2 per opening and 0 per closing, the running sum minus the number of
    # brackets seen is the depth after each one.
    depths: map[int] = map(operator.sub, accumulate(brackets.translate(_STEPS)), count(1))
    return max(depths)


def _param_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
