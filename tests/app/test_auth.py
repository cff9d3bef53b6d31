"""API keys: who gets in, on which routes, and the tricks that must not get anyone in."""

from __future__ import annotations

import hmac
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.routing import Route
from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.errors import InvalidRequestError, RateLimitError
from deepseek_serve.http.auth import KeyFileError, KeyRing, bearer_token
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import MakeClient, settings_for
from tests.fakes import FakeEngine

KEYS = "sk-first,sk-second"
BODY = {"prompt": "def f(", "max_tokens": 2}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(make_client: MakeClient) -> TestClient:
    return make_client(settings={"api_keys": KEYS})[0]


def test_open_without_keys(client: TestClient) -> None:
    assert client.post("/v1/completions", json=BODY).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("sk-wrong"),
        auth("sk-first-but-longer"),
        auth("sk-firs"),
        auth(""),
        {"Authorization": "sk-first"},  # no scheme
        {"Authorization": "Basic c2stZmlyc3Q6"},  # another scheme
        {"Authorization": "Token sk-first"},
        {"X-Api-Key": "sk-first"},
        {"Authorization": "Bearer sk-first, Bearer sk-first"},
    ],
)
def test_rejected_keys(secured: TestClient, headers: dict[str, str]) -> None:
    r = secured.post("/v1/completions", json=BODY, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert "sk-" not in error["message"]


@pytest.mark.parametrize("key", ["sk-first", "sk-second"])
def test_each_key_is_accepted(secured: TestClient, key: str) -> None:
    r = secured.post("/v1/completions", json=BODY, headers=auth(key))
    assert r.status_code == 200, r.text
    assert secured.get("/v1/models", headers={"authorization": f"bearer   {key}  "}).is_success


def test_every_route_but_the_allowlist_needs_a_key(secured: TestClient) -> None:
    """Walks the app's own route table, so a route added later is covered too."""
    routes = [r for r in secured.app.routes if isinstance(r, Route)]  # type: ignore[attr-defined]
    assert {r.path for r in routes} >= {"/v1/completions", "/v1/chat/completions", "/metrics"}
    for route in routes:
        for method in sorted(route.methods or {"GET"}):
            r = secured.request(method, route.path, json=BODY)
            if route.path == "/health":
                assert r.status_code == 200, (method, route.path)
            else:
                assert r.status_code == 401, (method, route.path, r.status_code)


def test_only_keys_with_the_metrics_permission_read_metrics(
    tmp_path: Path, make_client: MakeClient
) -> None:
    """Issue 16: any client key could read /metrics (every tenant's traffic), even with its
    rate limit spent."""
    path = tmp_path / "keys"
    path.write_text(
        "sk-tenant name=tenant requests=1/minute\n"
        "sk-scraper name=scraper metrics=yes\n"
        "sk-no name=no metrics=no\n"
    )
    client = make_client(settings={"api_key_file": path, "api_keys": "sk-env"})[0]
    for key in ("sk-tenant", "sk-no", "sk-env"):
        r = client.get("/metrics", headers=auth(key))
        assert r.status_code == 403, key
        assert r.json()["error"]["code"] == "permission_denied"
        assert "deepseek_serve_requests" not in r.text
    assert client.get("/v1/models", headers=auth("sk-tenant")).status_code == 200
    assert client.get("/v1/models", headers=auth("sk-tenant")).status_code == 429
    assert client.get("/metrics", headers=auth("sk-tenant")).status_code == 403
    r = client.get("/metrics", headers=auth("sk-scraper"))
    assert r.status_code == 200 and "deepseek_serve_requests" in r.text
    assert client.get("/v1/models", headers=auth("sk-scraper")).status_code == 200


def test_metrics_can_be_made_public(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": KEYS, "public_metrics": True})[0]
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/models").status_code == 401


def test_key_file_with_names_and_limits(tmp_path: Path, make_client: MakeClient) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-alice name=alice requests=2/minute\n\nsk-bob  # no limits\n")
    client = make_client(settings={"api_key_file": path, "request_rate_limit": None})[0]
    for _ in range(2):
        assert client.get("/v1/models", headers=auth("sk-alice")).status_code == 200
    assert client.get("/v1/models", headers=auth("sk-alice")).status_code == 429
    for _ in range(5):
        assert client.get("/v1/models", headers=auth("sk-bob")).status_code == 200
    assert client.get("/v1/models", headers=auth("sk-carol")).status_code == 401


def test_a_hash_inside_a_key_is_part_of_the_key(tmp_path: Path, make_client: MakeClient) -> None:
    """Issue 16: ``sk-ha#sh-9d0c name=hash requests=none`` made ``sk-ha`` a valid key and
    dropped the line's options. Comments are whole lines, or fields after the key."""
    path = tmp_path / "keys"
    path.write_text(
        "# team keys\n"
        "  # indented comment\n"
        "sk-ha#sh-9d0c name=hash requests=none\n"
        "sk-limited name=limited requests=1/minute # a comment after the fields\n"
        "sk-bare\t#comment straight after the key\n"
    )
    client = make_client(settings={"api_key_file": path, "request_rate_limit": "2/minute"})[0]
    assert client.get("/v1/models", headers=auth("sk-ha")).status_code == 401
    for _ in range(4):  # requests=none was kept: no limit
        assert client.get("/v1/models", headers=auth("sk-ha#sh-9d0c")).status_code == 200
    assert client.get("/v1/models", headers=auth("sk-limited")).status_code == 200
    assert client.get("/v1/models", headers=auth("sk-limited")).status_code == 429
    assert client.get("/v1/models", headers=auth("sk-bare")).status_code == 200
    ring = KeyRing.from_settings(settings_for(api_key_file=path))
    assert [k.name for k in ring.keys][:2] == ["hash", "limited"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("sk-a requests=lots", "requests= is not a rate"),
        ("sk-a owner=me", "expected name="),
        ("sk-a name=x name=y", "twice"),
        ("sk-a metrics=maybe", "metrics= is yes or no"),
        ("sk-a\xa0 name=x", "printable ASCII"),  # a no-break space, which split() would eat
        ("sk-\u00e9t\u00e9", "printable ASCII"),
        ("sk-a\x85b", "printable ASCII"),  # NEL: str.splitlines() would cut the key here
        ("sk-a\x0bb", "printable ASCII"),
        ("sk-dup name=a\nsk-dup name=b", "the same key as"),
        ("name=alice requests=none", "the key comes first"),  # the key left out
    ],
)
def test_bad_key_file_lines_stop_start_up_naming_the_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "keys"
    path.write_text("# header\n" + line + "\n", encoding="utf-8")
    with pytest.raises(KeyFileError, match=problem) as caught:
        KeyRing.from_settings(settings_for(api_key_file=path))
    message = str(caught.value)
    assert f"{path}:2" in message or f"{path}:3" in message
    assert "sk-" not in message.replace(str(path), "")  # the key itself is never shown


def test_a_bad_key_file_is_a_clean_start_up_error(tmp_path: Path) -> None:
    """``deepseek-serve`` says why it cannot start (exit 2), before loading any model."""
    from deepseek_serve.server import StartupError, check_keys

    path = tmp_path / "keys"
    path.write_text("sk-a\u00a0\n")
    with pytest.raises(StartupError, match="keys:1"):
        check_keys(settings_for(api_key_file=path))
    with pytest.raises(StartupError, match="api_keys entry 2"):
        check_keys(settings_for(api_keys="sk-ok,sk-\u00e9"))
    with pytest.raises(StartupError, match="cannot read"):
        check_keys(settings_for(api_key_file=tmp_path / "missing"))


@pytest.mark.parametrize("tail", ["\xa0", "\x85", "\x0b", "\x0c", "\x1f"])
def test_keys_with_trailing_unicode_whitespace_are_refused(secured: TestClient, tail: str) -> None:
    """Issue 16: ``Bearer <key>\\xa0`` and ``\\x85`` were accepted (str.strip strips them).
    Only HTTP's own blanks, space and tab, may surround the key."""
    for value in (f"Bearer sk-first{tail}", f"Bearer {tail}sk-first", f"Bearer{tail}sk-first"):
        header = {"Authorization": value.encode("latin-1")}  # the bytes on the wire
        r = secured.post("/v1/completions", json=BODY, headers=header)  # type: ignore[dict-item]
        assert r.status_code == 401, repr(value)
    for end in (tail, "\u2028", "\u3000"):
        assert bearer_token(f"Bearer sk-first{end}") == f"sk-first{end}"


def test_key_check_compares_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check takes the same steps whichever key matches, or none: one constant-time
    comparison per stored key, no early exit."""
    ring = KeyRing.from_settings(settings_for(api_keys="k1,k2,k3,k4"))
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in ("k1", "k4", "nope", ""):
        calls.clear()
        ring.match(presented)
        assert len(calls) == 4, presented
    assert ring.match("k3") is not None and ring.match("k33") is None


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("\tBearer\tabc\t") == "abc"
    assert bearer_token("Bearer \xa0abc") == "\xa0abc"
    assert bearer_token("Bearer") is None
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None


# --- over a real uvicorn socket: what the router sees is what the gate sees --------------------


@pytest.fixture
def live(v1_setup: TokenizerSetup) -> Iterator[str]:
    """A real uvicorn server (fake engine) with keys and CORS for one origin."""
    settings = settings_for(api_keys=KEYS, cors_origins="https://ide.example")
    engine = FakeEngine(v1_setup.prompt_tokenizer)
    app = create_app(settings, engine, v1_setup.prompt_tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(base + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield base
    server.should_exit = True
    thread.join(10)


def raw_request(base: str, request: bytes) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


TRICKS = [
    b"GET //v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1/models/ HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1%2Fmodels HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1/%6Dodels HTTP/1.1\r\nHost: x\r\n",
    b"GET /health/../v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /health/%2E%2E/v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /./v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1/models?/health HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1/models#/health HTTP/1.1\r\nHost: x\r\n",
    b"GET http://evil/health/../v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1/health\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 127.0.0.1\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Original-URL: /health\r\n",
    b"POST //v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
    b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\n",
    b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://ide.example\r\n",
    b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: GET\r\n",
    b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
    b"GET /metrics/ HTTP/1.1\r\nHost: x\r\n",
]


@pytest.mark.parametrize("head", TRICKS, ids=lambda h: h.split(b"\r\n")[0].decode())
def test_bypass_tricks_get_401(live: str, head: bytes) -> None:
    status, data = raw_request(live, head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert status == 401, data[:300]
    assert head.startswith(b"HEAD") or b"invalid_api_key" in data
    assert b'"data"' not in data


def test_real_cors_preflight_is_answered_without_data(live: str) -> None:
    status, data = raw_request(
        live,
        b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://ide.example\r\n"
        b"Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    assert b"access-control-allow-origin: https://ide.example" in data.lower()
    assert b'"data"' not in data
    # and a preflight from another origin is refused by CORS, also without data
    status, data = raw_request(
        live,
        b"OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n"
        b"Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
    )
    assert status == 400 and b'"data"' not in data


def test_cors_headers_on_real_requests(live: str) -> None:
    r = httpx.get(
        live + "/v1/models", headers={**auth("sk-first"), "Origin": "https://ide.example"}
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ide.example"
    r = httpx.get(live + "/v1/models", headers={"Origin": "https://ide.example"})
    assert r.status_code == 401


def test_cors_is_off_by_default(client: TestClient) -> None:
    r = client.options(
        "/v1/models",
        headers={"Origin": "https://ide.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code == 405


def test_health_stays_public_over_the_wire(live: str) -> None:
    assert httpx.get(live + "/health").status_code == 200


@pytest.mark.parametrize("tail", [b"\xa0", b"\x85"])
def test_trailing_unicode_whitespace_over_the_wire_gets_401(live: str, tail: bytes) -> None:
    """The bytes a client puts on the wire, through uvicorn's own header parsing."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-first" + tail
    status, data = raw_request(live, head + b"\r\nConnection: close\r\n\r\n")
    assert status == 401, data[:300]
    ok = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-first \t"
    assert raw_request(live, ok + b"\r\nConnection: close\r\n\r\n")[0] == 200


def test_several_api_processes_share_key_limits_up_to_a_bound(tmp_path: Path) -> None:
    """Request limits are kept as shared request times: a limit too big to keep is refused at
    start-up with the key's name; ordinary ones start."""
    from deepseek_serve.server import StartupError, check_keys

    path = tmp_path / "keys"
    path.write_text("sk-two name=ci requests=2000000/day\n")
    with pytest.raises(StartupError, match="key ci: a request limit of more than 1000000"):
        check_keys(settings_for(api_key_file=path, api_processes=2))
    check_keys(settings_for(api_key_file=path, api_processes=1))
    check_keys(settings_for(api_keys="sk-one", token_rate_limit="1000/minute", api_processes=4))


def test_shared_quotas_hold_a_key_to_its_limit_across_processes() -> None:
    """Two ``SharedQuotas`` over one buffer, as two API processes see it: a key gets its limits
    once between them, not once each."""
    import asyncio
    import multiprocessing

    from deepseek_serve.http.auth import ApiKey
    from deepseek_serve.http.quotas import SharedQuotas, shared_layout, shared_size

    keys = [ApiKey("a", b"a", "3/minute", "100/minute"), ApiKey("b", b"b", "2/minute", None)]
    layout = shared_layout(keys)
    buffer = multiprocessing.get_context("spawn").RawArray("d", shared_size(layout))
    lock = multiprocessing.get_context("spawn").Lock()
    now = [1000.0]
    one, two = SharedQuotas(layout, buffer, lock), SharedQuotas(layout, buffer, lock)
    for q in (one, two):
        q._clock = lambda: now[0]

    a, b = keys
    for q in (one, two, one):
        asyncio.run(q.admit(a))
    with pytest.raises(RateLimitError) as refused:
        asyncio.run(two.admit(a))
    assert refused.value.headers["Retry-After"] == "60"
    asyncio.run(two.admit(b))  # another key's count is its own
    asyncio.run(one.admit(b))
    with pytest.raises(RateLimitError):
        asyncio.run(one.admit(b))
    now[0] += 30
    with pytest.raises(RateLimitError) as refused:  # a moving window: the oldest ends at +60
        asyncio.run(one.admit(a))
    assert refused.value.headers["Retry-After"] == "30"
    now[0] += 31
    asyncio.run(one.admit(a))

    # Tokens: what one process reserved, the other cannot; what was not used comes back.
    first = one.reserve(a, 80, param="max_tokens")
    with pytest.raises(RateLimitError, match="has 20 left"):
        two.reserve(a, 30, param="max_tokens")
    one.settle(a, first, used=10)
    second = two.reserve(a, 90, param="max_tokens")
    assert second is not None
    now[0] += 61  # a new window: an old reservation's refund does not inflate it
    two.settle(a, second, used=0)
    third = one.reserve(a, 100, param="max_tokens")
    with pytest.raises(RateLimitError):
        two.reserve(a, 1, param="max_tokens")
    two.settle(a, third, used=40)
    assert one.reserve(a, 60, param="max_tokens") is not None
    with pytest.raises(InvalidRequestError, match="more than this key's limit"):
        one.reserve(a, 101, param="max_tokens")
