"""/infill in-process over the fake engine, with bodies shaped like the llama.cpp plugins send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import MakeClient, settings_for, wait_started
from tests.fakes import FakeEngine
from tests.plugins import vim_body, vscode_body

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"


def test_llama_vim_body(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/infill", json=vim_body())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == set(vim_body()["response_fields"])  # flat "timings/prompt_n" keys
    assert body["timings/predicted_n"] >= 1 and body["truncated"] is False
    _, ids, options = engine.seen[-1]
    text = (
        f"{FIM_BEGIN}#util.py\ndef helper():\n    return 1\n\n"
        f"import os\n\ndef main():\n    {FIM_HOLE}\n\nmain()\n{FIM_END}"
    )
    assert ids == engine.tokenizer.encode(text)
    assert body["timings/prompt_n"] == len(ids)
    assert options.max_tokens == 16 and options.top_k == 40 and options.top_p == 0.99
    assert options.stop_token_ids == (32014,)  # end-of-sentence, also on instruct checkpoints


def test_llama_vscode_body_and_fields_it_reads(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    r = client.post("/infill", json=vscode_body())
    body = r.json()
    assert r.status_code == 200
    read = ["content", "stop", "tokens_predicted", "tokens_evaluated", "timings", "tokens_cached"]
    for key in [*read, "truncated", "generation_settings", "stop_type", "model"]:
        assert key in body, key
    assert body["stop"] is True and body["tokens_evaluated"] == len(engine.seen[-1][1])
    assert set(body["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms",
                                    "prompt_per_second", "predicted_per_second"}  # fmt: skip
    assert body["tokens_predicted"] == body["timings"]["predicted_n"] <= 8
    assert body["tokens_dropped"] == 0


def test_warmup_with_n_predict_0_returns_empty_content(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    warm = {
        "input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0, "samplers": [],
        "input_extra": [{"text": "x = 1\n", "filename": "a.py", "time": 1}],
        "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1, "temperature": 0.0,
        "response_fields": [""],
    }  # fmt: skip
    r = client.post("/infill", json=warm)
    assert r.status_code == 200 and r.json() == {}  # response_fields [""] selects nothing
    del warm["response_fields"]
    body = client.post("/infill", json=warm).json()
    assert body["content"] == "" and body["tokens_predicted"] == 0
    _, ids, options = engine.seen[-1]
    assert options.max_tokens == 1  # the prompt is processed (cached), nothing returned
    assert ids == engine.tokenizer.encode(f"{FIM_BEGIN}#a.py\nx = 1\n\n{FIM_HOLE}{FIM_END}")
    assert engine.running == set()


def _llama_error(r: httpx.Response, param: str | None = None) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"input_extra": "not a list"}, "input_extra", "must be an array"),
        ({"input_extra": {"filename": "a", "text": "b"}}, "input_extra", "must be an array"),
        ({"input_extra": [{"text": "x"}]}, "input_extra[0].filename", "Missing"),
        ({"input_extra": [{"filename": "a.py"}]}, "input_extra[0].text", "Missing"),
        ({"input_extra": [{"filename": 3, "text": "x"}]}, "input_extra[0].filename", "string"),
        ({"input_extra": [{"filename": "a\nb", "text": "x"}]}, "input_extra[0].filename", "line"),
        ({"input_prefix": "", "input_suffix": "", "prompt": ""}, "input_prefix", "nothing"),
        ({"n_predict": -2}, "n_predict", "greater than or equal to -1"),
        ({"n_predict": "16"}, "n_predict", "integer"),
        ({"temperature": -1}, "temperature", "greater"),
        ({"stop": "\n"}, "stop", "list"),
        ({"n_indent": -1}, "n_indent", "greater"),
    ],
)
def test_bad_input_gets_llama_errors_and_engine_keeps_serving(
    client_engine: tuple[TestClient, FakeEngine], change: dict[str, Any], param: str, says: str
) -> None:
    client, engine = client_engine
    message = _llama_error(client.post("/infill", json=vim_body(**change)), param)
    assert says in message
    assert not engine.seen
    assert client.post("/infill", json=vim_body()).status_code == 200


def test_malformed_json_and_wrong_content_type(client: TestClient) -> None:
    r = client.post("/infill", content=b"{nope", headers={"content-type": "application/json"})
    assert "not valid JSON" in _llama_error(r)
    r = client.post("/infill", content=b"{}", headers={"content-type": "text/plain"})
    assert "Content-Type" in _llama_error(r)


def test_context_far_larger_than_the_window_is_packed(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine  # the fake engine's window is 256 tokens
    big = "".join(f"v{i} = {i}\n" for i in range(2000))
    body = vim_body(
        input_prefix=big + "def f():\n",
        input_suffix="\nprint(f())\n" + big,
        input_extra=[{"filename": f"m{i}.py", "text": big} for i in range(5)],
        response_fields=None,
    )
    r = client.post("/infill", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["truncated"] is True and out["tokens_dropped"] > 20000
    _, ids, options = engine.seen[-1]
    assert len(ids) + options.max_tokens <= 256
    text = engine.tokenizer.decode(ids)
    assert f"def f():\n    {FIM_HOLE}\nprint(f())\n" in text


def test_stream_is_llama_sse_without_done(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, _ = client_engine
    body = vscode_body(seed=5, n_indent=0, t_max_predict_ms=0)
    whole = client.post("/infill", json=body).json()
    r = client.post("/infill", json={**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f]
    assert all(f.startswith("data: {") for f in frames)  # no [DONE]
    chunks = [json.loads(f[len("data: ") :]) for f in frames]
    assert all(c["stop"] is False for c in chunks[:-1]) and chunks[-1]["stop"] is True
    assert "".join(c["content"] for c in chunks) == whole["content"]
    assert chunks[-1]["tokens_predicted"] == whole["tokens_predicted"]


def test_n_indent_cuts_a_line_indented_less(make_client: MakeClient) -> None:
    client, engine = make_client()
    word = {w: engine.word_ids[i] for i, w in enumerate(["alpha", "beta", "gamma", "delta",
            "nl", "return", "x", "=", "1"])}  # fmt: skip
    engine.script = [word["x"], word["nl"], word["return"], word["x"]]
    body = vim_body(n_indent=4, n_predict=50, response_fields=None, t_max_predict_ms=0)
    out = client.post("/infill", json=body).json()
    assert out["content"] == " x\n "  # cut before "return", indented 1 < 4
    assert out["stop_type"] == "limit" and out["tokens_predicted"] == 3
    assert engine.running == set()
    out = client.post("/infill", json={**body, "n_indent": 1}).json()  # every line passes
    assert out["content"].startswith(" x\n return x x\n return") and out["tokens_predicted"] == 50


def test_time_budget_ends_at_a_newline(make_client: MakeClient) -> None:
    client, engine = make_client(token_delay=0.01)
    nl, x = engine.word_ids[4], engine.word_ids[6]
    engine.script = [x, x, nl, x, nl, x, x]
    body = vim_body(n_indent=0, n_predict=60, t_max_predict_ms=15, response_fields=None)
    out = client.post("/infill", json=body).json()
    assert out["content"] == " x x\n" and out["stop_type"] == "limit"
    out = client.post("/infill", json={**body, "t_max_predict_ms": 0}).json()
    assert out["tokens_predicted"] == 60  # no budget: runs to n_predict


def test_stop_word_and_eos(make_client: MakeClient) -> None:
    client, engine = make_client()
    engine.script = [engine.word_ids[6], engine.word_ids[7], engine.word_ids[8]]
    body = vim_body(n_indent=0, response_fields=None, stop=[" ="])
    out = client.post("/infill", json=body).json()
    assert (out["content"], out["stop_type"], out["stopping_word"]) == (" x", "word", " =")
    engine.script = [engine.word_ids[6], 32014]
    out = client.post("/infill", json={**body, "stop": []}).json()
    assert (out["content"], out["stop_type"]) == (" x", "eos")
    for bias in ({"32014": -100}, [[32014, -100]]):  # both of llama.cpp's logit_bias forms
        client.post("/infill", json={**body, "logit_bias": bias})
        assert engine.seen[-1][2].logit_bias == {32014: -100.0}
    r = client.post("/infill", json={**body, "logit_bias": [[99999, 1]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias[0]"


async def test_a_newer_request_of_the_session_supersedes_the_older(
    v1_setup: TokenizerSetup,
) -> None:
    engine = FakeEngine(v1_setup.prompt_tokenizer, token_delay=0.01, max_model_len=4096)
    app = create_app(settings_for(), engine, v1_setup.prompt_tokenizer)
    body = vim_body(n_predict=300, n_indent=0, t_max_predict_ms=0, response_fields=None)
    async with app.router.lifespan_context(app):
        await wait_started(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = {"X-Session-Id": "editor-1"}
            old = asyncio.create_task(http.post("/infill", json=body, headers=headers))
            await asyncio.sleep(0.1)
            other = asyncio.create_task(
                http.post("/infill", json={**body, "n_predict": 5}, headers={"X-Session-Id": "2"})
            )
            new = await http.post("/infill", json={**body, "n_predict": 5}, headers=headers)
            first = await old
            assert (await other).status_code == 200  # another session is not touched
        assert new.status_code == 200 and new.json()["tokens_predicted"] == 5
        assert first.status_code == 409 and first.json()["error"]["code"] == 409
        assert engine.running == set() and len(app.state.deepseek.sessions) == 0


def test_coder_v2_uses_its_own_fim_and_stop_tokens(
    make_client: MakeClient, v2_setup: TokenizerSetup
) -> None:
    client, engine = make_client(setup=v2_setup, model_vocab_size=102400)
    r = client.post("/infill", json=vscode_body(input_extra=[{"filename": "a.py", "text": "x\n"}]))
    assert r.status_code == 200, r.text
    _, ids, options = engine.seen[-1]
    special = v2_setup.variant.special
    assert ids[:2] == [special.bos, special.fim_begin] and ids[-1] == special.fim_end
    assert ids == engine.tokenizer.encode(
        f"{FIM_BEGIN}#a.py\nx\n\nconst x = 1;\nfunction f() {{\n  return {FIM_HOLE}\n}}\n{FIM_END}"
    )
    assert options.stop_token_ids == (special.eos,)
