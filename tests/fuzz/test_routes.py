"""Property-based fuzzing of every route (hypothesis), in process over the FakeEngine.

For every POST route: bodies built from a realistic seed with fields replaced by any JSON value,
removed or added, and the seed's bytes mutated (cut, spliced, overwritten); for the GET routes:
any query string; any values of the headers we read (``Authorization`` with API keys on).
The property: no answer is a 5xx or carries an internal-error frame, every
refusal is a JSON error, and ``/health`` is still 200 afterwards.

The seeds are what clients send. Sources: openai/openai-python (completions.create,
chat.completions.create), ggml-org/llama.vim autoload/llama.vim and ggml-org/llama.vscode
src/llama-server.ts (tests/plugins.py), deepseek-ai/DeepSeek-Coder's deployment guide
(/api/v1/*: see routes/guide).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route
from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import settings_for, wait_ready
from tests.fakes import FakeEngine
from tests.plugins import vim_body, vscode_body

pytestmark = pytest.mark.fuzz

# Examples per test: the whole tier takes about half a minute on a loaded two-core machine.
# FUZZ_EXAMPLES=5000 for a longer hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared, loaded CI machine: speed is not the property
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
    print_blob=True,
)

SEEDS: dict[str, list[dict[str, Any]]] = {
    "/v1/completions": [
        {"model": "demo", "prompt": "def f(", "max_tokens": 4},
        {
            "prompt": ["a", "b"],
            "suffix": "\n",
            "max_tokens": 3,
            "n": 2,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n"],
            "logprobs": 2,
            "echo": True,
            "seed": 1,
            "logit_bias": {"100": 1.5},
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "u1",
        },
        {"prompt": [[1, 2, 3]], "max_tokens": 2, "best_of": 2, "presence_penalty": 0.1},
    ],
    "/v1/chat/completions": [
        {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "more"},
            ],
            "max_tokens": 3,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 2,
            "stop": "\n",
            "cache_prompt": True,  # llama.vim sends it here too
        },
    ],
    "/infill": [vim_body(), vscode_body(stream=True), {"input_prefix": "a", "n_predict": 2}],
    "/api/v1/completion": [{"prompt": "def f(", "max_tokens": 4, "language": "python"}],
    "/api/v1/insertion": [{"prefix": "def f(", "suffix": "\n", "max_tokens": 4}],
    "/api/v1/chat": [
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    ],
    # DeepSeek's platform paths (Continue's deepseek provider) and vLLM's tokenizer endpoints
    "/beta/completions": [{"model": "demo", "prompt": "def f(", "suffix": "\n", "max_tokens": 4}],
    "/v1/beta/completions": [{"prompt": "def f(", "suffix": "\n", "max_tokens": 4, "echo": False}],
    "/chat/completions": [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}],
    "/tokenize": [
        {"prompt": "def f(x):", "add_special_tokens": True},
        {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True},
        {"content": "x", "with_pieces": True},
    ],
    "/detokenize": [{"tokens": [32013, 1, 2]}],
    # llama.cpp's /completion and Ollama's API
    "/completion": [
        {"prompt": "def f(", "n_predict": 4, "stream": True, "stop": ["\n"]},
        {"prompt": [32013, 1, 2], "n_predict": 2, "n_probs": 2, "return_tokens": True},
        {"prompt": ["a", "b"], "n_predict": 2, "n_cmpl": 2, "response_fields": ["content"]},
    ],
    "/api/generate": [
        {"model": "demo", "prompt": "def f(", "suffix": "\n", "options": {"num_predict": 4}},
        {"model": "demo", "prompt": "x", "raw": True, "stream": False, "system": "s"},
    ],
    "/api/chat": [
        {
            "model": "demo",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 3, "temperature": 0.1, "stop": ["\n"]},
        },
    ],
    "/api/show": [{"model": "demo"}, {"name": "demo", "verbose": True}],
}
GET_ROUTES = ["/health", "/v1/models", "/version", "/metrics", "/", "/api/tags", "/api/version"]

# Any JSON value: text with lone surrogates (JSON escapes them), numbers at and past every
# boundary (NaN and Infinity are what Python's json reads and writes for them).
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 32255, 32256, 4096])
    | st.floats()
    | TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def edited_body(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A seed with some of its fields (or other routes' field names) replaced, removed or
    added with any JSON value."""
    body = dict(draw(st.sampled_from(SEEDS[path])))
    names = sorted({k for seeds in SEEDS.values() for seed in seeds for k in seed})
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "set", "drop", "unknown"]))
        if action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "unknown":
            body[draw(TEXT)] = draw(JSON_VALUES)
        else:
            body[draw(st.sampled_from(names))] = draw(JSON_VALUES)
    return body


@st.composite
def mutated_bytes(draw: st.DrawFn, path: str) -> bytes:
    """A seed's JSON bytes, cut, spliced and overwritten."""
    raw = bytearray(json.dumps(draw(st.sampled_from(SEEDS[path]))).encode())
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, len(raw)))
        end = draw(st.integers(start, min(len(raw), start + 16)))
        insert = draw(
            st.binary(max_size=8)
            | st.sampled_from(
                [b"[" * 5000, b'{"a":' * 5000, b"9" * 5000, b'"\\ud800"', b"NaN", b"-", b'"']
            )
        )
        raw[start:end] = insert
    return bytes(raw)


@pytest.fixture(scope="module")
def client(v1_setup: TokenizerSetup) -> Iterator[TestClient]:
    engine = FakeEngine(v1_setup.prompt_tokenizer)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def keyed_client(v1_setup: TokenizerSetup) -> Iterator[TestClient]:
    """API keys on, with a request rate limit: Authorization is parsed and looked up."""
    engine = FakeEngine(v1_setup.prompt_tokenizer)
    settings = settings_for(api_keys="sk-fuzz-1", request_rate_limit="1000000/hour")
    with TestClient(create_app(settings, engine, v1_setup.prompt_tokenizer)) as client:
        wait_ready(client)
        yield client


def check(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert "nternal server error" not in r.text, r.text[:500]
    if r.status_code >= 400:
        assert "error" in r.json()


def post(client: TestClient, path: str, content: bytes) -> None:
    check(client.post(path, content=content, headers={"content-type": "application/json"}))


@pytest.mark.parametrize("path", sorted(SEEDS))
def test_edited_bodies_never_get_a_5xx(client: TestClient, path: str) -> None:
    @FUZZ
    @given(body=edited_body(path))
    def run(body: dict[str, Any]) -> None:
        post(client, path, json.dumps(body).encode())

    run()
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("path", sorted(SEEDS))
def test_mutated_bytes_never_get_a_5xx(client: TestClient, path: str) -> None:
    @FUZZ
    @given(raw=mutated_bytes(path))
    def run(raw: bytes) -> None:
        post(client, path, raw)

    run()
    assert client.get("/health").status_code == 200


# Header values a client can send: visible latin-1 and tabs (httpx refuses CR, LF and NUL).
HEADER_VALUES = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
    | st.just("\t"),
    max_size=40,
)
HEADERS = ["content-type", "authorization", "x-request-id", "accept", "origin", "user-agent"]


@pytest.mark.parametrize("path", ["/v1/completions", "/infill", "/health"])
def test_header_values_never_get_a_5xx(client: TestClient, path: str) -> None:
    body = json.dumps(SEEDS.get(path, [{}])[0]).encode()

    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(headers=st.dictionaries(st.sampled_from(HEADERS), HEADER_VALUES, max_size=4))
    def run(headers: dict[str, str]) -> None:
        encoded = {k: v.encode("latin-1") for k, v in headers.items()}
        if path == "/health":
            check(client.get(path, headers=encoded))
        else:
            check(client.post(path, content=body, headers=encoded))

    run()
    assert client.get("/health").status_code == 200


def test_authorization_values_never_get_a_5xx(keyed_client: TestClient) -> None:
    body = json.dumps(SEEDS["/v1/completions"][0]).encode()
    prefixes = st.sampled_from(["", "Bearer ", "bearer ", "Bearer  ", "Basic ", "Bearer sk-fuzz-1"])

    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(prefix=prefixes, value=HEADER_VALUES)
    def run(prefix: str, value: str) -> None:
        headers = {"authorization": (prefix + value).encode("latin-1")}
        check(keyed_client.post("/v1/completions", content=body, headers=headers))
        check(keyed_client.get("/metrics", headers=headers))

    run()
    ok = {"authorization": "Bearer sk-fuzz-1"}
    assert keyed_client.post("/v1/completions", content=body, headers=ok).status_code != 401
    assert keyed_client.get("/health").status_code == 200


@pytest.mark.parametrize("path", GET_ROUTES)
def test_query_strings_never_get_a_5xx(client: TestClient, path: str) -> None:
    @settings(FUZZ, max_examples=EXAMPLES // 3)
    @given(query=st.lists(st.tuples(TEXT, TEXT), max_size=4), raw=st.binary(max_size=32))
    def run(query: list[tuple[str, str]], raw: bytes) -> None:
        encoded = "&".join(
            f"{quote(k, errors='replace')}={quote(v, errors='replace')}" for k, v in query
        )
        check(client.get(f"{path}?{encoded}"))
        check(client.get(f"{path}?{quote(raw)}"))

    run()
    assert client.get("/health").status_code == 200


def test_every_route_is_fuzzed(client: TestClient) -> None:
    """A new route needs seeds here (POST) or a place in GET_ROUTES."""
    routes = [r for r in client.app.routes if isinstance(r, Route)]  # type: ignore[attr-defined]
    assert {r.path for r in routes if "POST" in (r.methods or ())} == set(SEEDS)
    assert {r.path for r in routes if "GET" in (r.methods or ())} == set(GET_ROUTES)
