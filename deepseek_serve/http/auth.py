"""API keys: where they come from and how a presented key is checked.

Keys are kept as SHA-256 digests and every check compares the presented key's digest with every
stored digest (``hmac.compare_digest``, no early exit), so the time taken does not depend on which
key, or how much of one, the client got right.

A key is printable ASCII without spaces (what an ``Authorization`` header carries unambiguously);
the presented key is compared exactly, after stripping only the blanks HTTP allows around a
header value and between its scheme and credentials (space and tab). A key that breaks this rule
stops start-up: a key that can never be presented, or is cut short, must not pass silently.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from deepseek_serve.settings import Settings

_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no blank, control or non-ASCII character
_BLANKS = re.compile(r"[ \t]+")
_HTTP_BLANKS = " \t"  # RFC 9110 OWS; str.strip() would also strip \xa0, \x85, \u2028 ...
_OPTIONS = ("name", "requests", "tokens", "metrics")
_OFF = ("none", "off")
_YES = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    request_limit: str | None  # limits syntax, e.g. "100/hour"; None: unlimited
    token_limit: str | None
    metrics: bool = False  # may read /metrics (every tenant's traffic)


class KeyFileError(ValueError):
    """A key file or key setting that cannot be used as written; the message names the line
    or entry, never the key."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    keys: tuple[ApiKey, ...]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys = []
        seen: dict[bytes, str] = {}
        for number, secret in enumerate(settings.api_keys, 1):
            where = f"api_keys entry {number}"
            value = secret.get_secret_value()
            _check_key(value, where)
            key = _key(value, None, settings.request_rate_limit, None, False, settings)
            keys.append(_unique(key, where, seen))
        if settings.api_key_file is not None:
            keys += [
                _unique(key, where, seen) for key, where in _read(settings.api_key_file, settings)
            ]
        return cls(tuple(keys))


def read_key_file(path: Path, settings: Settings) -> list[ApiKey]:
    """One key per line: ``KEY [name=NAME] [requests=RATE] [tokens=RATE] [metrics=yes]``.

    A line whose first non-blank character is ``#`` is a comment, and so is the rest of a line
    from a field that starts with ``#`` after the key: a ``#`` inside a key is part of the key
    (keys may not start with ``#``). Fields are separated by spaces or tabs only."""
    seen: dict[bytes, str] = {}
    return [_unique(key, where, seen) for key, where in _read(path, settings)]


def _read(path: Path, settings: Settings) -> list[tuple[ApiKey, str]]:
    from limits import parse

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from None
    keys = []
    # Lines end at \n only: str.splitlines() would also split at \x85, \x0b, \u2028 ..., which
    # could cut a key in two.
    for number, raw in enumerate(text.split("\n"), 1):
        where = f"{path}:{number}"
        line = raw.removesuffix("\r").strip(_HTTP_BLANKS)
        if not line or line.startswith("#"):
            continue
        secret, *fields = _BLANKS.split(line)
        for i, field in enumerate(fields):
            if field.startswith("#"):
                fields = fields[:i]
                break
        _check_key(secret, where)
        if secret.partition("=")[0] in _OPTIONS:
            raise KeyFileError(f"{where}: the line starts with an option; the key comes first")
        options: dict[str, str] = {}
        for field in fields:
            name, sep, value = field.partition("=")
            if not sep or name not in _OPTIONS:
                raise KeyFileError(
                    f"{where}: expected name=, requests=, tokens= or metrics= after the key "
                    "(a comment starts with ' #')"
                )
            if name in options:
                raise KeyFileError(f"{where}: {name}= is given twice")
            if name == "name" and not _KEY.fullmatch(value):
                raise KeyFileError(f"{where}: name= needs printable ASCII without spaces")
            if name == "metrics" and value.lower() not in _YES:
                raise KeyFileError(f"{where}: metrics= is yes or no")
            if name in ("requests", "tokens") and value.lower() not in _OFF:
                try:
                    parse(value)
                except ValueError:
                    raise KeyFileError(f"{where}: {name}= is not a rate like 100/hour") from None
            options[name] = value
        requests = options.get("requests", settings.request_rate_limit)
        metrics = _YES[options.get("metrics", "no").lower()]
        key = _key(secret, options.get("name"), requests, options.get("tokens"), metrics, settings)
        keys.append((key, where))
    return keys


def _check_key(secret: str, where: str) -> None:
    if not _KEY.fullmatch(secret):
        raise KeyFileError(
            f"{where}: the key has a character other than printable ASCII (a control, "
            "non-ASCII or blank character), which a client could not send exactly"
        )


def _unique(key: ApiKey, where: str, seen: dict[bytes, str]) -> ApiKey:
    if key.digest in seen:
        raise KeyFileError(f"{where}: the same key as {seen[key.digest]}")
    seen[key.digest] = where
    return key


def _key(
    secret: str,
    name: str | None,
    requests: str | None,
    tokens: str | None,
    metrics: bool,
    settings: Settings,
) -> ApiKey:
    digest = _digest(secret)
    tokens = tokens or settings.token_rate_limit
    return ApiKey(
        name=name or f"key-{digest.hex()[:8]}",
        digest=digest,
        request_limit=None if requests is None or requests.lower() in _OFF else requests,
        token_limit=None if tokens is None or tokens.lower() in _OFF else tokens,
        metrics=metrics,
    )


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header; None for any other scheme.

    Only spaces and tabs are stripped (HTTP's optional whitespace): any other character, a
    no-break space or NEL included, belongs to the presented key and so fails the match."""
    if not authorization:
        return None
    value = authorization.strip(_HTTP_BLANKS)
    scheme, sep, token = value.partition(" ")
    if not sep:
        scheme, sep, token = value.partition("\t")
    if scheme.lower() != "bearer":
        return None
    return token.strip(_HTTP_BLANKS) or None
