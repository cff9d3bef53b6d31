"""Ollama's API in-process over the fake engine: prompt rules (raw, suffix, system, chat),
NDJSON streams, model names, the model cards, and errors in Ollama's shape (the gate's too)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from deepseek_serve.prompts.tokenizer import PromptTokenizer, TokenizerSetup
from deepseek_serve.prompts.variant import Kind
from tests.app.conftest import MakeClient
from tests.clients import (
    FIM_BEGIN,
    FIM_END,
    FIM_HOLE,
    continue_ollama_fim,
    continue_read_ndjson,
    deepseek_fim,
    tabby_ollama_generate,
    tabby_read_ollama,
)
from tests.fakes import FakeEngine

MODEL = "deepseek-coder:6.7b-base"
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def lines(raw: str) -> list[dict[str, Any]]:
    assert raw.endswith("\n") and "\n\n" not in raw  # one object per line, no blank lines
    return [json.loads(line) for line in raw.split("\n")[:-1]]


def test_generate_streams_ndjson_by_default(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"model": MODEL, "prompt": "def f():", "raw": True, "options": {"num_predict": 4}}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    out = lines(r.text)
    assert all(o["model"] == MODEL and RFC3339_NANO.match(o["created_at"]) for o in out)
    assert [o["done"] for o in out] == [False] * (len(out) - 1) + [True]
    final = out[-1]
    assert final["response"] == "" and final["done_reason"] == "length"
    assert final["eval_count"] == 4 and final["prompt_eval_count"] == len(engine.seen[-1][1])
    assert final["total_duration"] >= final["eval_duration"] > 0  # nanoseconds
    assert "context" not in final
    whole = client.post("/api/generate", json={**body, "stream": False}).json()
    assert whole["done"] is True and whole["response"] == "".join(o["response"] for o in out)


def test_prompt_rules(make_client: MakeClient) -> None:
    client, engine = make_client()  # an instruct checkpoint (the v1 demo)
    tok = engine.tokenizer

    def sent(**body: Any) -> list[int]:
        body = {"model": MODEL, "stream": False, "options": {"num_predict": 1}, **body}
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200, r.text
        return engine.seen[-1][1]

    assert sent(prompt="x = ", raw=True) == tok.encode("x = ")
    fim = f"{FIM_BEGIN}a{FIM_HOLE}b{FIM_END}"
    assert sent(prompt="a", suffix="b") == tok.encode(fim)  # Continue's FIM: suffix, no raw
    assert sent(prompt=fim) == tok.encode(fim)  # twinny: FIM tokens rendered, no raw
    assert sent(prompt="x", template="{{ .Prompt }}") == tok.encode("x")  # Tabby
    chat = tok.decode(sent(prompt="Write a sort", system="Be brief."))
    assert "Be brief.### Instruction:\nWrite a sort\n### Response:\n" in chat
    assert engine.seen[-1][2].stop_token_ids == (32021,)  # <|EOT|> ends an instruct turn


def test_base_checkpoint_completes_plain_prompts(
    make_client: MakeClient, v1_setup: TokenizerSetup
) -> None:
    variant = dataclasses.replace(v1_setup.variant, kind=Kind.BASE)
    base = PromptTokenizer(v1_setup.prompt_tokenizer.hf, variant)
    client, engine = make_client(setup=dataclasses.replace(v1_setup, prompt_tokenizer=base))
    body = {"model": MODEL, "prompt": "x = ", "system": "ignored", "stream": False,
            "options": {"num_predict": 1}}  # fmt: skip
    assert client.post("/api/generate", json=body).status_code == 200
    assert engine.seen[-1][1] == base.encode("x = ")  # no template: Ollama's base models
    show = client.post("/api/show", json={"model": MODEL}).json()
    assert show["template"].endswith("{{- else }}{{ .Prompt }}{{- end }}")
    r = client.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user",
                                       "content": "hi"}]})  # fmt: skip
    assert r.status_code == 400 and "base checkpoint" in r.json()["error"]
    r = client.post("/api/generate", json={"model": MODEL, "prompt": "x", "raw": True,
                                           "system": "s"})  # fmt: skip
    assert r.status_code == 400 and r.json() == {
        "error": "raw mode does not support template, system, or context"
    }


def test_chat_lines_all_carry_a_message(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"model": MODEL, "messages": [{"role": "System", "content": "Be brief."},
            {"role": "user", "content": "hi"}], "options": {"num_predict": 3}}  # fmt: skip
    r = client.post("/api/chat", json=body)
    contents = continue_read_ndjson(r.text, field="message")
    assert len(contents) == 4 and contents[-1] == ""
    assert lines(r.text)[-1]["done_reason"] == "length"
    text = engine.tokenizer.decode(engine.seen[-1][1])
    assert text.endswith("Be brief.### Instruction:\nhi\n### Response:\n")
    whole = client.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["message"] == {"role": "assistant", "content": "".join(contents)}


def test_tabby_body_without_content_type(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    path, raw = tabby_ollama_generate(MODEL, deepseek_fim("def f(", ")"), num_predict=5)
    r = client.post(path, content=raw)  # ollama-rs sends no Content-Type
    assert r.status_code == 200, r.text
    assert tabby_read_ollama([r.content]) != ""
    options = engine.seen[-1][2]
    assert options.max_tokens == 5 and options.seed == 2013081599 and options.temperature == 0.1


def test_negative_seed_and_null_options(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    body = {"model": MODEL, "prompt": "x", "raw": True, "stream": False,
            "options": {"seed": -5, "stop": None, "top_k": None, "num_predict": 2}}  # fmt: skip
    assert client.post("/api/generate", json=body).status_code == 200
    options = engine.seen[-1][2]
    assert options.seed == 2**32 - 5 and options.top_k == 40 and options.top_p == 0.9


def test_continue_num_predict_4096_fits_the_window(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    path, headers, body = continue_ollama_fim(MODEL, "def f(", ")\n")
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == 200 and continue_read_ndjson(r.text)
    _, ids, options = engine.seen[-1]
    assert len(ids) + options.max_tokens == 256  # the fake's window


def test_model_names(client: TestClient) -> None:
    for name in ("demo", "demo:latest", "deepseek-coder:1.3b-base", "whatever"):
        body = {"model": name, "prompt": "x", "raw": True, "stream": False,
                "options": {"num_predict": 1}}  # fmt: skip
        r = client.post("/api/generate", json=body)
        assert r.status_code == 200 and r.json()["model"] == name
    for missing in ({}, {"model": ""}):
        r = client.post("/api/generate", json={"prompt": "x", **missing})
        assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = client.post("/api/generate", json={"model": "m"})  # empty prompt: Ollama loads
    assert r.json()["done_reason"] == "load" and r.json()["done"] is True
    r = client.post("/api/generate", json={"model": "m", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"


def test_num_predict_0_processes_the_prompt_only(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    body = {"model": MODEL, "prompt": "x", "raw": True, "options": {"num_predict": 0}}
    out = lines(client.post("/api/generate", json=body).text)
    assert len(out) == 1 and out[0]["response"] == "" and "eval_count" not in out[0]
    assert engine.seen[-1][2].max_tokens == 1 and engine.running == set()


def test_editor_traffic_runs_first_under_priority_scheduling(make_client: MakeClient) -> None:
    client, engine = make_client(settings={"engine_args": {"scheduling_policy": "priority"}})
    body = {"model": MODEL, "prompt": "x", "raw": True, "stream": False,
            "options": {"num_predict": 1}}  # fmt: skip
    client.post("/api/generate", json=body)
    assert engine.seen[-1][2].priority < 0
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 1}}  # fmt: skip
    client.post("/api/chat", json=chat)
    assert engine.seen[-1][2].priority == 0
    client.post("/completion", json={"prompt": "x", "n_predict": 1})
    assert engine.seen[-1][2].priority < 0
    client.post("/completion", json={"prompt": ["x", "y"], "n_predict": 1})
    assert engine.seen[-1][2].priority == 0


def test_model_cards(client: TestClient) -> None:
    tags = client.get("/api/tags").json()
    (card,) = tags["models"]
    assert card["name"] == "demo:latest" and card["size"] == 0
    assert RFC3339_NANO.match(card["modified_at"])
    show = client.post("/api/show", json={"name": card["name"]}).json()
    assert ".Suffix" in show["template"] and show["parameters"] == "num_ctx 256"
    assert show["model_info"]["llama.context_length"] == 256
    assert "insert" in show["capabilities"]
    r = client.post("/api/show", json={})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    assert client.get("/api/version").json()["version"].count(".") == 2
    r = client.get("/")
    assert r.text == "Ollama is running" and r.headers["content-type"].startswith("text/plain")
    assert client.head("/").status_code == 200 and client.head("/api/tags").status_code == 200


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"options": {"temperature": "hot"}}, "options.temperature"),
        ({"options": {"num_predict": -3}}, "options.num_predict"),
        ({"stream": "yes"}, "stream"),
        ({"format": "json"}, "format"),
        ({"images": ["aGk="]}, "text only"),
        ({"context": [1, 2]}, "context"),
        ({"template": "{{ .System }} {{ .Prompt }}"}, "templates"),
        ({"raw": True, "prompt": "x" * 3000}, "context window"),
    ],
)
def test_errors_are_ollama_shaped(
    client_engine: tuple[TestClient, FakeEngine], change: dict[str, Any], says: str
) -> None:
    client, engine = client_engine
    r = client.post("/api/generate", json={"model": MODEL, "prompt": "x", **change})
    assert r.status_code == 400, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and says in body["error"]
    assert not engine.seen


def test_gate_and_router_errors_are_ollama_shaped(make_client: MakeClient) -> None:
    client = make_client(settings={"api_keys": "k1"})[0]
    r = client.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    r = client.get("/api/generate", headers={"Authorization": "Bearer k1"})
    assert r.status_code == 405 and isinstance(r.json()["error"], str)
    r = client.post("/api/chat", content=b"{nope", headers={"Authorization": "Bearer k1"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_mid_stream_failure_is_an_error_line(make_client: MakeClient) -> None:
    client, _ = make_client(fail_after=2)
    body = {"model": MODEL, "prompt": "x", "raw": True, "options": {"num_predict": 9}}
    out = lines(client.post("/api/generate", json=body).text)
    assert out[-1] == {"error": "Internal server error."}
    assert all(o["done"] is False for o in out[:-1])
