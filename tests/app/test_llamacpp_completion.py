"""llama.cpp's /completion and the llama.cpp fields /infill shares with it, in-process over the
fake engine: shapes (one object or an array), streams, token-id prompts, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.app.conftest import MakeClient
from tests.clients import continue_llamacpp, deepseek_fim
from tests.fakes import FakeEngine
from tests.plugins import vscode_body

FIM = deepseek_fim("def add(a, b):\n    ", "\n")


def frames(raw: str) -> list[dict[str, Any]]:
    parts = [f for f in raw.split("\n\n") if f]
    assert all(f.startswith("data: {") for f in parts), parts  # no [DONE] in llama.cpp streams
    return [json.loads(f[len("data: ") :]) for f in parts]


def test_text_prompt_is_tokenized_as_sent(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/completion", json={"prompt": FIM, "n_predict": 5, "seed": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    _, ids, options = engine.seen[-1]
    assert ids == engine.tokenizer.encode(FIM)  # FIM tokens parsed, no chat template
    # A raw prompt (FIM rendered by the client) is plain text to the server: it stops where
    # llama.cpp does, at any end-of-generation token (the instruct checkpoint's <|EOT|> too).
    assert options.max_tokens == 5 and options.stop_token_ids == (32014, 32021)
    assert body["stop"] is True and body["tokens_predicted"] == 5 == body["timings"]["predicted_n"]
    assert body["tokens_evaluated"] == len(ids) and body["stop_type"] == "limit"
    assert body["generation_settings"]["seed"] == 9
    assert body["generation_settings"]["n_ctx"] == 256
    assert body["prompt"] == engine.tokenizer.decode(ids)  # with its special tokens
    assert body["tokens"] == [] and "completion_probabilities" not in body


def test_token_id_prompts_are_checked(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    ids = engine.tokenizer.encode("def f():")
    r = client.post("/completion", json={"prompt": ids, "n_predict": 2, "return_tokens": True})
    assert r.status_code == 200 and engine.seen[-1][1] == ids
    assert len(r.json()["tokens"]) == 2 and all(isinstance(t, int) for t in r.json()["tokens"])
    for bad, param in (([1, 40000], "prompt[1]"), ([[5], [1, -3]], "prompt[1][1]")):
        r = client.post("/completion", json={"prompt": bad, "n_predict": 2})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == 400
    r = client.post("/completion", json={"prompt": [1, "text"]})
    assert r.status_code == 400 and "mixed" in r.json()["error"]["message"]
    assert len(engine.seen) == 1


def test_several_prompts_and_n_cmpl_answer_an_array(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, engine = client_engine
    body = {"prompt": ["a = 1", [1, 64, 65]], "n_predict": 3, "n_cmpl": 2, "seed": 4}
    r = client.post("/completion", json=body)
    assert r.status_code == 200, r.text
    results = r.json()
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert all(x["stop"] and x["tokens_predicted"] == 3 for x in results)
    assert results[2]["tokens_evaluated"] == 3 and len(engine.seen) == 2
    assert engine.seen[-1][2].n == 2
    streamed = frames(client.post("/completion", json={**body, "stream": True}).text)
    finals = [f for f in streamed if f["stop"]]
    assert sorted(f["index"] for f in finals) == [0, 1, 2, 3]
    for i in range(4):
        text = "".join(f["content"] for f in streamed if f["index"] == i)
        assert text == results[i]["content"]  # same seed, same text


def test_stream_frames_carry_content_stop_and_tokens(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    client, _ = client_engine
    body = {"prompt": FIM, "n_predict": 6, "seed": 3, "n_probs": 2}
    whole = client.post("/completion", json=body).json()
    r = client.post("/completion", json={**body, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = frames(r.text)
    assert all(isinstance(c["content"], str) and isinstance(c["stop"], bool) for c in chunks)
    assert [c["stop"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(c["tokens"] and len(c["completion_probabilities"]) == 1 for c in chunks[:-1])
    assert "".join(c["content"] for c in chunks) == whole["content"]
    final = chunks[-1]
    assert final["content"] == "" and "completion_probabilities" not in final
    assert final["stop_type"] == "limit" and final["generation_settings"]["n_predict"] == 6
    probs = whole["completion_probabilities"]
    assert len(probs) == 6 and all(len(p["top_logprobs"]) == 2 for p in probs)
    assert all(p["logprob"] <= 0 and p["bytes"] == list(p["token"].encode()) for p in probs)


def test_continue_n_predict_4096_fits_the_window(
    client_engine: tuple[TestClient, FakeEngine],
) -> None:
    """llama.cpp generates up to the window's end; Continue asks 4096 whatever the prompt."""
    client, engine = client_engine  # a 256-token window
    _, headers, body = continue_llamacpp(FIM)
    r = client.post("/completion", json={**body, "stream": False}, headers=headers)
    assert r.status_code == 200, r.text
    _, ids, options = engine.seen[-1]
    assert len(ids) + options.max_tokens == 256 and r.json()["stop_type"] == "limit"


def test_response_fields_and_warmup(client_engine: tuple[TestClient, FakeEngine]) -> None:
    client, engine = client_engine
    r = client.post("/completion", json={"prompt": "x", "n_predict": 2, "response_fields": []})
    assert {"generation_settings", "timings", "prompt", "content"} <= set(r.json())
    fields = ["content", "generation_settings/n_predict", "nope"]
    r = client.post("/completion", json={"prompt": "x", "n_predict": 2, "response_fields": fields})
    assert set(r.json()) == {"content", "generation_settings/n_predict"}
    assert r.json()["generation_settings/n_predict"] == 2
    r = client.post("/completion", json={"prompt": "x", "n_predict": 0})
    assert r.json()["content"] == "" and r.json()["tokens_predicted"] == 0
    assert engine.seen[-1][2].max_tokens == 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": {"prompt_string": "x", "multimodal_data": []}}, "prompt"),
        ({"n_predict": -2}, "n_predict"),
        ({"n_probs": 99}, "n_probs"),  # over settings.max_logprobs
        ({"n_cmpl": 99}, "n_cmpl"),  # over settings.max_n
        ({"stop": [""]}, "stop"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
def test_bad_bodies_get_llama_errors(
    client_engine: tuple[TestClient, FakeEngine], change: dict[str, Any], param: str
) -> None:
    client, engine = client_engine
    r = client.post("/completion", json={"prompt": "x", "n_predict": 2, **change})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert error["param"].startswith(param), error
    assert not engine.seen


def test_infill_has_completion_fields(client_engine: tuple[TestClient, FakeEngine]) -> None:
    """llama.vscode asks 3 completions (n_cmpl) and gets an array, as from llama.cpp; every
    /completion field works on /infill too."""
    client, engine = client_engine
    r = client.post("/infill", json=vscode_body(n_cmpl=3, n_indent=0, t_max_predict_ms=0))
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and [x["index"] for x in results] == [0, 1, 2]
    assert all(x["generation_settings"]["n_ctx"] == 256 for x in results)
    assert engine.seen[-1][2].n == 3
    body = vscode_body(return_tokens=True, n_probs=1, response_fields=[], seed=11)
    one = client.post("/infill", json=body).json()
    assert len(one["tokens"]) == one["tokens_predicted"] == len(one["completion_probabilities"])
    assert one["generation_settings"]["seed"] == 11
    assert one["prompt"].startswith("<｜begin▁of▁sentence｜><｜fim▁begin｜>")


def test_n_cmpl_with_line_rules_cuts_each_completion(make_client: MakeClient) -> None:
    client, engine = make_client()
    nl, x, ret = engine.word_ids[4], engine.word_ids[6], engine.word_ids[5]
    engine.script = [x, nl, ret, x]
    body = vscode_body(n_cmpl=2, n_indent=4, n_predict=40, t_max_predict_ms=0)
    results = client.post("/infill", json=body).json()
    assert [r["content"] for r in results] == [" x\n ", " x\n "]
    assert all(r["stop_type"] == "limit" for r in results)
    assert engine.running == set()
