"""API keys: where they come from and how a presented key is checked.

Keys are kept as SHA-256 digests and every check compares the presented key's digest with every
stored digest (``hmac.compare_digest``, no early exit), so the time taken does not depend on which
key, or how much of one, the client got right.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from deepseek_serve.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    request_limit: str | None  # limits syntax, e.g. "100/hour"; None: unlimited
    token_limit: str | None


class KeyFileError(ValueError):
    pass


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
        keys = [
            _key(secret.get_secret_value(), None, settings.request_rate_limit, None, settings)
            for secret in settings.api_keys
        ]
        if settings.api_key_file is not None:
            keys += read_key_file(settings.api_key_file, settings)
        return cls(tuple(keys))


def read_key_file(path: Path, settings: Settings) -> list[ApiKey]:
    """One key per line: ``KEY [name=NAME] [requests=RATE] [tokens=RATE]``; ``#`` comments."""
    from limits import parse

    keys = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        secret, *options = line.split()
        fields: dict[str, str] = {}
        for option in options:
            name, sep, value = option.partition("=")
            if not sep or name not in ("name", "requests", "tokens"):
                raise KeyFileError(f"{path}:{number}: expected name=, requests= or tokens=")
            if name != "name" and value.lower() not in ("none", "off"):
                try:
                    parse(value)
                except ValueError:
                    raise KeyFileError(f"{path}:{number}: not a rate like 100/hour") from None
            fields[name] = value
        requests = fields.get("requests", settings.request_rate_limit)
        keys.append(_key(secret, fields.get("name"), requests, fields.get("tokens"), settings))
    return keys


def _key(
    secret: str, name: str | None, requests: str | None, tokens: str | None, settings: Settings
) -> ApiKey:
    digest = _digest(secret)
    tokens = tokens or settings.token_rate_limit
    return ApiKey(
        name=name or f"key-{digest.hex()[:8]}",
        digest=digest,
        request_limit=None if requests in (None, "none", "off") else requests,
        token_limit=None if tokens in (None, "none", "off") else tokens,
    )


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header; None for any other scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
