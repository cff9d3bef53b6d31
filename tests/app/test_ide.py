"""Editor features on /v1/completions: repository context, sessions, priorities, instruct stops."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.prompts.scheduling import INTERACTIVE_PRIORITY
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import settings_for, wait_ready, wait_started
from tests.fakes import FakeEngine

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
EXTRA = [{"filename": "util.py", "text": "def helper():\n    return 1\n"}]


def test_repository_context_beside_suffix(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"prompt": "x = ", "suffix": "\nprint(x)\n", "input_extra": EXTRA,
            "filename": "main.py", "max_tokens": 4}  # fmt: skip
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["tokens_dropped"] == 0 and r.headers["x-context-tokens-dropped"] == "0"
    files = "#util.py\ndef helper():\n    return 1\n\n#main.py\n"
    text = f"{FIM_BEGIN}{files}x = {FIM_HOLE}\nprint(x)\n{FIM_END}"
    assert engine.seen[-1][1] == engine.tokenizer.encode(text)
    # without suffix: plain repository-level completion, the README's layout
    del body["suffix"]
    client.post("/v1/completions", json=body)
    plain = "#util.py\ndef helper():\n    return 1\n\n#main.py\nx = "
    assert engine.seen[-1][1] == engine.tokenizer.encode(plain)
    # streamed: the report is in the header
    r = client.post("/v1/completions", json={**body, "stream": True})
    assert r.headers["x-context-tokens-dropped"] == "0" and r.text.endswith("data: [DONE]\n\n")


def test_repository_context_far_larger_than_the_window_is_packed(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine  # window 256
    big = "".join(f"v{i} = {i}\n" for i in range(3000))
    body = {"prompt": big + "y = ", "suffix": "\n" + big, "max_tokens": 16,
            "input_extra": [{"filename": f"m{i}.py", "text": big} for i in range(3)]}  # fmt: skip
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    dropped = r.json()["tokens_dropped"]
    assert dropped > 30000 and r.headers["x-context-tokens-dropped"] == str(dropped)
    _, ids, options = engine.seen[-1]
    assert len(ids) + options.max_tokens <= 256
    # without input_extra a prompt that does not fit is still refused, never cut
    r = client.post("/v1/completions", json={"prompt": big, "max_tokens": 16})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": [1, 2, 3]}, "input_extra"),
        ({"prompt": ["a", "b"]}, "input_extra"),
        ({"input_extra": "util.py"}, "input_extra"),
        ({"input_extra": [{"text": "x"}]}, "input_extra[0].filename"),
        ({"filename": "a\nb"}, "filename"),
        ({"session_id": ""}, "session_id"),
    ],
)
def test_bad_context_fields(
    client_engine: tuple[TestClient, FakeEngine], change: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post("/v1/completions", json={"prompt": "x", "input_extra": EXTRA, **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert not engine.seen


def test_instruct_completion_stops_at_eot_and_fim_runs_through_it(
    client_engine: tuple[TestClient, FakeEngine], v1_setup: TokenizerSetup
) -> None:
    client, engine = client_engine
    special = v1_setup.variant.special
    assert v1_setup.variant.kind.value == "instruct" and special.eot == 32021
    x = engine.word_ids[6]
    engine.script = [x, special.eot, x, special.eos, x]
    out = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 10}).json()
    assert out["choices"][0]["text"] == " x"  # a plain completion ends a turn at <|EOT|>
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == 2
    assert engine.seen[-1][2].stop_token_ids == (special.eos, special.eot)
    fim = {"prompt": "a", "suffix": "b", "max_tokens": 10}
    out = client.post("/v1/completions", json=fim).json()
    assert out["choices"][0]["text"] == " x<|EOT|> x"  # FIM: end-of-sentence only
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] == 4
    assert engine.seen[-1][2].stop_token_ids == (special.eos,)
    infill = {"input_prefix": "a", "input_suffix": "b", "n_predict": 10}
    assert client.post("/infill", json=infill).json()["content"] == " x<|EOT|> x"


@pytest.mark.parametrize("policy", ["priority", None])
def test_interactive_requests_run_ahead_under_priority_scheduling(
    v1_setup: TokenizerSetup, policy: str | None
) -> None:
    args = {"scheduling_policy": policy} if policy else {}
    engine = FakeEngine(v1_setup.prompt_tokenizer)
    settings = settings_for(engine_args=args)
    with TestClient(create_app(settings, engine, v1_setup.prompt_tokenizer)) as client:
        wait_ready(client)
        ahead = INTERACTIVE_PRIORITY if policy else 0
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        client.post("/infill", json={"input_prefix": "x", "n_predict": 1})
        client.post("/v1/completions", json={"prompt": ["x", "y"], "max_tokens": 1})
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                  "max_tokens": 1})  # fmt: skip
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "priority": 5})
        got = [options.priority for _, _, options in engine.seen]
        assert got == [ahead, ahead, 0, 0, 0, 5]


async def _two_in_one_session(
    v1_setup: TokenizerSetup, body: dict[str, Any]
) -> tuple[httpx.Response, httpx.Response, FakeEngine, int, str]:
    engine = FakeEngine(v1_setup.prompt_tokenizer, token_delay=0.01, max_model_len=4096)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    async with app.router.lifespan_context(app):
        await wait_started(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            old = asyncio.create_task(http.post("/v1/completions", json=body))
            await asyncio.sleep(0.1)
            new = await http.post("/v1/completions", json={**body, "max_tokens": 3})
            first = await old
        state = app.state.deepseek
        return first, new, engine, len(state.sessions), state.metrics.render().decode()


async def test_session_field_supersedes_on_completions(v1_setup: TokenizerSetup) -> None:
    body = {"prompt": "x", "max_tokens": 500, "session_id": "vim-42"}
    first, new, engine, active, metrics = await _two_in_one_session(v1_setup, body)
    assert first.status_code == 409 and first.json()["error"]["code"] == "superseded"
    assert new.status_code == 200 and new.json()["usage"]["completion_tokens"] == 3
    assert engine.running == set() and active == 0
    assert 'deepseek_serve_requests_aborted_total{reason="superseded"} 1.0' in metrics


async def test_superseded_stream_ends_with_an_error_frame(v1_setup: TokenizerSetup) -> None:
    body = {"prompt": "x", "max_tokens": 500, "session_id": "s", "stream": True}
    first, new, engine, _, _ = await _two_in_one_session(v1_setup, body)
    assert first.status_code == 200 and new.status_code == 200
    frames = [f[len("data: ") :] for f in first.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]" and json.loads(frames[-2])["error"]["code"] == "superseded"
    assert len(frames) < 100 and engine.running == set()
