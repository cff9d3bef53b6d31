"""/v1/chat/completions in-process over the fake engine."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from deepseek_serve.prompts.tokenizer import TokenizerSetup
from deepseek_serve.templates import ChatMessage, render_chat
from tests.app.conftest import MakeClient
from tests.fakes import FakeEngine

MESSAGES = [{"role": "user", "content": "Write quicksort in Python."}]


def chat(client: TestClient, **body):  # type: ignore[no-untyped-def]
    return client.post("/v1/chat/completions", json={"model": "demo", "messages": MESSAGES, **body})


def test_chat_renders_coder_v1_template_with_default_system(
    client_engine: tuple[TestClient, FakeEngine], v1_setup: TokenizerSetup
) -> None:
    client, engine = client_engine
    r = chat(client, max_tokens=3)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant"
    _, ids, options = engine.seen[-1]
    text = v1_setup.prompt_tokenizer.decode(ids)
    assert text.startswith("<｜begin▁of▁sentence｜>You are an AI programming assistant")
    # the official template leaves a newline after the generation prompt
    assert text.endswith("### Instruction:\nWrite quicksort in Python.\n### Response:\n")
    assert ids.count(32013) == 1
    assert options.stop_token_ids == (32021,)  # <|EOT|>


def test_chat_content_parts_and_developer_role(
    client_engine: tuple[TestClient, FakeEngine], v1_setup: TokenizerSetup
) -> None:
    client, engine = client_engine
    messages = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert (
        client.post(
            "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}
        ).status_code
        == 200
    )
    expected = render_chat(
        [ChatMessage("system", "Be terse."), ChatMessage("user", "a\nb")], v1_setup.variant
    )
    assert engine.seen[-1][1] == v1_setup.prompt_tokenizer.encode(expected)


def test_chat_v2_stops_at_eos(make_client: MakeClient, v2_setup: TokenizerSetup) -> None:
    client, engine = make_client(setup=v2_setup, model_vocab_size=102400, script=[100, 200])
    r = chat(client, max_tokens=2)
    assert r.status_code == 200
    _, ids, options = engine.seen[-1]
    assert options.stop_token_ids == (100001,)
    assert v2_setup.prompt_tokenizer.decode(ids).endswith(
        "User: Write quicksort in Python.\n\nAssistant:"
    )


def test_chat_stream_role_first_and_done_last(client: TestClient) -> None:
    full = chat(client, max_tokens=4, seed=1, n=2).json()
    r = chat(client, max_tokens=4, seed=1, n=2, stream=True, stream_options={"include_usage": True})
    frames = r.text.split("\n\n")[:-1]
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[len("data: ") :]) for f in frames[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]
    content: dict[int, str] = {}
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [m["finish_reason"] for m in mine][-1] == "length"
        assert all(m["finish_reason"] is None for m in mine[:-1])
        content[index] = "".join(m["delta"].get("content", "") for m in mine)
    assert content == {c["index"]: c["message"]["content"] for c in full["choices"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_chat_logprobs(client: TestClient) -> None:
    r = chat(client, max_tokens=2, logprobs=True, top_logprobs=3).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 2
    assert len(content[0]["top_logprobs"]) == 3
    assert content[0]["bytes"] == list(content[0]["token"].encode())


def test_chat_on_base_model_is_refused(make_client: MakeClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from deepseek_serve.prompts.tokenizer import prepare_tokenizer
    from tests.conftest import model_dir_with

    base = prepare_tokenizer(
        model_dir_with(tmp_path / "m", "demo"),
        kind_override=None,
        name_hint="deepseek-coder-6.7b-base",
        work_dir=tmp_path / "w",
    )
    client, engine = make_client(setup=base)
    r = chat(client, max_tokens=2)
    assert r.status_code == 400 and r.json()["error"]["code"] == "chat_not_supported"
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200 and engine.seen[-1][2].stop_token_ids == (32014,)
