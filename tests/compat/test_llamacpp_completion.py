"""llama.cpp's /completion as its clients use it, against the real server over real vLLM:
Continue's and Tabby's llama.cpp providers (streams), twinny's llamacpp provider, token-id
prompts. Each test names the client file whose request and parsing it reproduces."""

from __future__ import annotations

import json

import httpx

from deepseek_serve.prompts.tokenizer import TokenizerSetup
from tests.clients import (
    continue_llamacpp,
    continue_read_sse,
    deepseek_fim,
    tabby_llamacpp,
    tabby_read_llamacpp,
    twinny_llamacpp_fim,
    twinny_read,
)
from tests.e2e.conftest import LiveServer

PREFIX = "def fibonacci(n):\n    if n < 2:\n        return n\n    return "
SUFFIX = "\n\nprint(fibonacci(10))\n"


def _post(server: LiveServer, path: str, headers: dict[str, str], body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=120)


def test_continue_llamacpp_provider(server: LiveServer) -> None:
    # Source: continuedev/continue core/llm/llms/LlamaCpp.ts + packages/fetch/src/stream.ts
    # Its default n_predict (4096) does not fit the 4096-token window: generation stops at
    # the window's end as llama.cpp's would, so the test asks less to stay quick on CPU.
    path, headers, body = continue_llamacpp(deepseek_fim(PREFIX, SUFFIX), n_predict=12)
    r = _post(server, path, headers, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    text = "".join(continue_read_sse(r.text))
    final = json.loads(r.text.strip().split("\n\n")[-1][len("data: ") :])
    assert final["stop"] is True and final["tokens_predicted"] >= 1
    assert final["stop_type"] in ("eos", "limit", "word")
    assert "[DONE]" not in r.text
    # The whole answer came in the partial frames (a frame per token); the final one repeats
    # nothing.
    partial = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n") if f][:-1]
    assert final["content"] == "" and text == "".join(f["content"] for f in partial)
    assert sum(len(f["tokens"]) for f in partial) == final["tokens_predicted"]
    server.wait_engine_idle()


def test_continue_default_n_predict_is_fitted_to_the_window(server: LiveServer) -> None:
    path, headers, body = continue_llamacpp(deepseek_fim(PREFIX, SUFFIX))  # n_predict 4096
    body = {**body, "stream": False, "ignore_eos": True, "prompt": "x = 1\n" * 970}
    r = _post(server, path, headers, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokens_evaluated"] + out["tokens_predicted"] == 4096
    assert out["stop_type"] == "limit"
    server.wait_engine_idle()


def test_tabby_llamacpp_stream(server: LiveServer) -> None:
    # Source: TabbyML/tabby crates/http-api-bindings/src/completion/llama.rs (+ the
    # reqwest-eventsource content-type check): every chunk needs content and stop.
    path, headers, body = tabby_llamacpp(deepseek_fim(PREFIX, SUFFIX), n_predict=16)
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, headers=headers,
                      timeout=120) as r:  # fmt: skip
        raw = "".join(r.iter_text())
        text = tabby_read_llamacpp(r.status_code, r.headers["content-type"], raw)
    whole = _post(server, path, headers, {**body, "stream": False}).json()
    assert text == whole["content"]  # same seed, same text, streamed or not
    assert whole["generation_settings"]["seed"] == 1719999999999
    server.wait_engine_idle()


def test_twinny_llamacpp_provider(server: LiveServer) -> None:
    # Source: twinnydotdev/twinny src/extension/provider-options.ts (llamacpp: max_tokens, no
    # model) and src/extension/utils.ts (reads data.content; an empty Authorization header).
    path, headers, body = twinny_llamacpp_fim(deepseek_fim(PREFIX, SUFFIX), max_tokens=10)
    r = _post(server, path, headers, body)
    assert r.status_code == 200, r.text
    frames = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n") if f]
    assert frames[-1]["tokens_predicted"] <= 10  # max_tokens stands in for n_predict
    assert twinny_read(r.text, "content") == "".join(f["content"] for f in frames)
    server.wait_engine_idle()


def test_token_id_prompts_and_arrays(server: LiveServer, v1_setup: TokenizerSetup) -> None:
    """llama.cpp's tests/unit/test_completion.py test_completion_with_tokens_input, ported:
    token ids give the text's answer; several prompts give an array; ids outside the
    vocabulary are a 400 naming the item, and the engine keeps serving."""
    text = "def add(a, b):\n    return"
    body = {"prompt": text, "n_predict": 6, "seed": 42, "temperature": 0.0}
    one = _post(server, "/completion", {}, body).json()
    assert one["prompt"].startswith("<｜begin▁of▁sentence｜>def add")  # processed prompt
    ids = v1_setup.prompt_tokenizer.encode(text)  # the same DeepSeek tokenizer, BOS included
    from_ids = _post(server, "/completion", {}, {**body, "prompt": ids, "return_tokens": True})
    assert from_ids.status_code == 200, from_ids.text
    assert from_ids.json()["content"] == one["content"]
    assert from_ids.json()["tokens_evaluated"] == one["tokens_evaluated"] == len(ids)
    assert len(from_ids.json()["tokens"]) == from_ids.json()["tokens_predicted"]
    both = _post(server, "/completion", {}, {**body, "prompt": [text, ids]}).json()
    assert [b["index"] for b in both] == [0, 1]
    assert both[0]["content"] == both[1]["content"] == one["content"]
    bad = _post(server, "/completion", {}, {**body, "prompt": [1, 10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt[1]"
    assert _post(server, "/completion", {}, body).json()["content"] == one["content"]
    server.wait_engine_idle()


def test_n_probs_as_llama_cpp_tests_it(server: LiveServer) -> None:
    """llama.cpp's tests/unit/test_completion.py test_n_probs and test_n_probs_stream, ported:
    one entry per token, each with exactly n_probs alternatives; one entry per stream frame."""
    body = {"prompt": "I believe the meaning of life is", "n_predict": 5, "n_probs": 3,
            "ignore_eos": True, "seed": 1}  # fmt: skip
    out = _post(server, "/completion", {}, body).json()
    probs = out["completion_probabilities"]
    assert len(probs) == 5
    for entry in probs:
        assert entry["id"] >= 0 and entry["logprob"] <= 0 and isinstance(entry["bytes"], list)
        assert len(entry["top_logprobs"]) == 3
        assert all(t["logprob"] <= 0 and isinstance(t["token"], str) for t in entry["top_logprobs"])
    r = _post(server, "/completion", {}, {**body, "stream": True})
    frames = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n") if f]
    assert all(len(f["completion_probabilities"]) == 1 for f in frames[:-1])
    assert "completion_probabilities" not in frames[-1] and len(frames) == 6
    assert [f["completion_probabilities"][0]["id"] for f in frames[:-1]] == [
        p["id"] for p in probs
    ]  # same seed: the same tokens, streamed or not
    server.wait_engine_idle()
