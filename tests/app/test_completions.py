"""/v1/completions in-process over the fake engine: what reaches the engine and what comes back."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.app.conftest import MakeClient
from tests.fakes import FakeEngine


def post(client: TestClient, body: dict, path: str = "/v1/completions"):  # type: ignore[no-untyped-def]
    return client.post(path, json=body)


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    frames = text.split("\n\n")[:-1]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[len("data: ") :] for f in frames]


def test_completion_shape_and_usage(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = post(client, {"model": "demo", "prompt": "def f():", "max_tokens": 5, "seed": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "demo"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    _, prompt_ids, options = engine.seen[-1]
    assert body["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 5,
        "total_tokens": len(prompt_ids) + 5,
    }
    assert options.max_tokens == 5 and options.seed == 3


def test_default_max_tokens_is_openai_16(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    assert post(client, {"prompt": "x"}).json()["usage"]["completion_tokens"] == 16
    assert engine.seen[-1][2].max_tokens == 16


def test_prompt_gets_exactly_one_bos(
    client_engine: tuple[TestClient, FakeEngine], v1_setup: TokenizerSetup
) -> None:
    client, engine = client_engine
    bos = v1_setup.variant.special
    for prompt in ["Hello world", bos.bos_text + "Hello world", ""]:
        post(client, {"prompt": prompt, "max_tokens": 1})
        ids = engine.seen[-1][1]
        assert ids[0] == bos.bos and ids.count(bos.bos) == 1, (prompt, ids)
    assert engine.seen[0][1] == [32013, 17535, 1835]  # golden ids of "Hello world"


def test_prompt_forms(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = post(client, {"prompt": ["a", "b", "c"], "max_tokens": 2, "n": 2})
    assert [c["index"] for c in r.json()["choices"]] == list(range(6))
    r = post(client, {"prompt": [32013, 17535, 1835], "max_tokens": 1})
    assert r.status_code == 200 and engine.seen[-1][1] == [32013, 17535, 1835]
    r = post(client, {"prompt": [[17535], [1835, 1835]], "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == 3
    assert sorted(s[1] for s in engine.seen[-2:]) == [[1835, 1835], [17535]]


def test_fim_with_suffix_renders_deepseek_tokens(
    client_engine: tuple[TestClient, FakeEngine], v1_setup: TokenizerSetup
) -> None:
    client, engine = client_engine
    hf = v1_setup.prompt_tokenizer.hf
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    r = post(client, {"prompt": prefix, "suffix": suffix, "max_tokens": 3})
    assert r.status_code == 200
    _, ids, options = engine.seen[-1]
    expected = [
        32013,
        32016,
        *hf.encode(prefix, add_special_tokens=False),
        32015,
        *hf.encode(suffix, add_special_tokens=False),
        32017,
    ]
    assert ids == expected
    assert options.stop_token_ids == (32014,)  # <｜end▁of▁sentence｜>, not <|EOT|>


def test_completion_on_instruct_model_stops_at_eot_or_eos(make_client: MakeClient) -> None:
    # Continue's vLLM provider renders the chat template itself and posts it here
    # (continuedev/continue core/llm/llms/Vllm.ts, _legacystreamComplete): the turn ends at
    # <|EOT|>, as vLLM stops at the checkpoint's generation_config eos.
    client, engine = make_client(script=[32021, 32014])
    r = post(client, {"prompt": "x", "max_tokens": 10}).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 1  # stopped at <|EOT|>
    assert engine.seen[-1][2].stop_token_ids == (32014, 32021)
    client, engine = make_client(script=[32014, 32021])
    r = post(client, {"prompt": "x", "max_tokens": 10}).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 1


def test_fim_on_instruct_model_does_not_stop_at_eot(make_client: MakeClient) -> None:
    client, engine = make_client(script=[32021, 32014])
    r = post(client, {"prompt": "x", "suffix": "y", "max_tokens": 10}).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 2  # went through <|EOT|>, stopped at EOS
    assert engine.seen[-1][2].stop_token_ids == (32014,)


def test_user_stops_add_to_variant_stops(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    post(client, {"prompt": "x", "max_tokens": 2, "stop_token_ids": [1835], "stop": ["\n\n"]})
    options = engine.seen[-1][2]
    assert options.stop_token_ids == (32014, 32021, 1835) and options.stop == ("\n\n",)


def test_ignore_eos_drops_only_the_variant_stops(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    post(client, {"prompt": "x", "max_tokens": 2, "ignore_eos": True, "stop_token_ids": [1835]})
    assert engine.seen[-1][2].stop_token_ids == (1835,)


def test_stop_string_truncates(make_client: MakeClient, v1_setup: TokenizerSetup) -> None:
    hf = v1_setup.prompt_tokenizer.hf
    ids = hf.encode(" alpha beta gamma", add_special_tokens=False)
    client, _ = make_client(script=ids)
    r = post(client, {"prompt": "x", "max_tokens": 10, "stop": " gamma"}).json()
    assert r["choices"][0]["text"] == " alpha beta" and r["choices"][0]["finish_reason"] == "stop"


def test_stream_matches_non_stream(client: TestClient) -> None:
    body = {"prompt": ["p", "q"], "max_tokens": 6, "n": 2, "seed": 7, "temperature": 0.8}
    full = post(client, body).json()
    r = post(client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage_chunk = chunks.pop()
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == full["usage"]
    assert all(c["usage"] is None for c in chunks)
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    for c in chunks:
        (choice,) = c["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    assert texts == {c["index"]: c["text"] for c in full["choices"]}
    assert finishes == {i: ["length"] for i in range(4)}
    # the finish_reason is in each choice's last chunk
    for index in range(4):
        last = [c for c in chunks if c["choices"][0]["index"] == index][-1]
        assert last["choices"][0]["finish_reason"] == "length"


def test_stream_without_usage_has_no_usage(client: TestClient) -> None:
    events = sse_events(post(client, {"prompt": "p", "max_tokens": 2, "stream": True}).text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_logprobs_and_echo(client: TestClient) -> None:
    r = post(client, {"prompt": "Hello", "max_tokens": 3, "logprobs": 2, "echo": True}).json()
    choice = r["choices"][0]
    assert choice["text"].startswith("Hello")
    lp = choice["logprobs"]
    # the prompt's 2 tokens (BOS, "Hello"), then the 3 generated
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 5
    assert lp["tokens"][:2] == ["<｜begin▁of▁sentence｜>", "Hello"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing before BOS
    # each position: its own token first, then the top 2 (vLLM's "up to logprobs + 1")
    for token, top in zip(lp["tokens"][1:], lp["top_logprobs"][1:], strict=True):
        assert next(iter(top)) == token and 2 <= len(top) <= 3


def test_mid_stream_failure_is_an_error_frame_then_done(make_client: MakeClient) -> None:
    client, engine = make_client(fail_after=2)
    r = post(client, {"prompt": "x", "max_tokens": 10, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "internal_server_error" and "secret" not in r.text
    assert engine.running == set()


def test_failure_before_first_token_gets_a_status(make_client: MakeClient) -> None:
    client, engine = make_client(fail_after=0)
    r = post(client, {"prompt": "x", "max_tokens": 10, "stream": True})
    assert r.status_code == 500 and "secret" not in r.text
    assert r.json()["error"]["message"] == "Internal server error."
    r = post(client, {"prompt": "x", "max_tokens": 10})
    assert r.status_code == 500 and "secret" not in r.text
    assert engine.running == set()


def test_continuous_usage_stats(client: TestClient) -> None:
    body = {
        "prompt": "p",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = [json.loads(e) for e in sse_events(post(client, body).text)[:-1]]
    used = [c["usage"]["completion_tokens"] for c in chunks]
    assert used == sorted(used) and used[-1] == 3 and used[0] >= 1
