"""A small Python client for the deployment guide's REST API (``/api/v1/...``), on httpx.

    from deepseek_serve.client import DeepSeekClient

    with DeepSeekClient(api_key="...", base_url="http://127.0.0.1:8000") as client:
        done = client.completion.create(prompt="def fib(n):\\n", max_tokens=64, language="python")
        print(done.choices[0].text, done.usage.total_tokens)
        middle = client.insertion.create(prefix="def add(a, b):\\n    ", suffix="\\n")
        reply = client.chat.create(messages=[{"role": "user", "content": "Explain FIM."}])
        for chunk in client.completion.create(prompt="import os\\n", stream=True):
            print(chunk.text, end="")

Leaving a stream early closes the connection, which aborts the work on the server.
Needs ``httpx`` (``pip install 'deepseek-serve[client]'``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, overload

import httpx


class DeepSeekAPIError(Exception):
    """The server refused or failed a request (its error body, when it sent one)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    @classmethod
    def from_body(cls, status_code: int, body: Any) -> DeepSeekAPIError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status_code, str(body))
        return cls(
            status_code,
            str(error.get("message")),
            type=error.get("type"),
            param=error.get("param"),
            code=error.get("code"),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str  # chat: the message (or, streamed, the delta) content
    finish_reason: str | None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None
    raw: dict[str, Any]

    @property
    def text(self) -> str:
        """The first choice's text (or chat content)."""
        return self.choices[0].text if self.choices else ""


def _choice(raw: dict[str, Any]) -> Choice:
    message = raw.get("message") or raw.get("delta")
    if isinstance(message, dict):
        text, role = message.get("content") or "", message.get("role")
    else:
        text, role = raw.get("text") or "", None
    return Choice(int(raw.get("index", 0)), text, raw.get("finish_reason"), role)


def _result(raw: dict[str, Any]) -> Result:
    usage = raw.get("usage")
    return Result(
        id=raw["id"],
        object=raw["object"],
        created=raw["created"],
        model=raw["model"],
        choices=[_choice(c) for c in raw.get("choices", [])],
        usage=Usage(**usage) if isinstance(usage, dict) else None,
        raw=raw,
    )


class _Endpoint:
    def __init__(self, client: DeepSeekClient, path: str) -> None:
        self._client = client
        self._path = path

    def _send(self, body: dict[str, Any], stream: bool) -> Result | Iterator[Result]:
        payload = {k: v for k, v in body.items() if v is not None}
        if stream:
            payload["stream"] = True
            return self._client._stream(self._path, payload)
        return self._client._post(self._path, payload)


class _Completion(_Endpoint):
    @overload
    def create(
        self,
        *,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        language: str | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[False] = False,
    ) -> Result: ...
    @overload
    def create(
        self,
        *,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        language: str | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[True],
    ) -> Iterator[Result]: ...
    def create(
        self,
        *,
        prompt: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        language: str | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: bool = False,
    ) -> Result | Iterator[Result]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "language": language, "stop": stop,
                "session_id": session_id}  # fmt: skip
        return self._send(body, stream)


class _Insertion(_Endpoint):
    @overload
    def create(
        self,
        *,
        prefix: str,
        suffix: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[False] = False,
    ) -> Result: ...
    @overload
    def create(
        self,
        *,
        prefix: str,
        suffix: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[True],
    ) -> Iterator[Result]: ...
    def create(
        self,
        *,
        prefix: str,
        suffix: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: bool = False,
    ) -> Result | Iterator[Result]:
        body = {"prefix": prefix, "suffix": suffix, "max_tokens": max_tokens,
                "temperature": temperature, "top_p": top_p, "stop": stop,
                "session_id": session_id}  # fmt: skip
        return self._send(body, stream)


class _Chat(_Endpoint):
    @overload
    def create(
        self,
        *,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[False] = False,
    ) -> Result: ...
    @overload
    def create(
        self,
        *,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: Literal[True],
    ) -> Iterator[Result]: ...
    def create(
        self,
        *,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | list[str] | None = None,
        session_id: str | None = None,
        stream: bool = False,
    ) -> Result | Iterator[Result]:
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                "top_p": top_p, "stop": stop, "session_id": session_id}  # fmt: skip
        return self._send(body, stream)


class DeepSeekClient:
    """Client of one deepseek_serve server; ``base_url`` is the server's root URL."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        base = base_url.rstrip("/").removesuffix("/api/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http_client or httpx.Client(base_url=base, timeout=timeout)
        self._headers = headers
        self.completion = _Completion(self, "/api/v1/completion")
        self.insertion = _Insertion(self, "/api/v1/insertion")
        self.chat = _Chat(self, "/api/v1/chat")

    def _post(self, path: str, payload: dict[str, Any]) -> Result:
        r = self._http.post(path, json=payload, headers=self._headers)
        body = _json(r)
        if r.status_code != 200:
            raise DeepSeekAPIError.from_body(r.status_code, body)
        return _result(body)

    def _stream(self, path: str, payload: dict[str, Any]) -> Iterator[Result]:
        with self._http.stream("POST", path, json=payload, headers=self._headers) as r:
            if r.status_code != 200:
                r.read()
                raise DeepSeekAPIError.from_body(r.status_code, _json(r))
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    status = 409 if error.get("code") == "superseded" else 500
                    raise DeepSeekAPIError.from_body(status, chunk)
                yield _result(chunk)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeepSeekClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text
