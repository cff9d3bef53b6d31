"""The official openai client against a real server over the real vLLM CPU engine."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from deepseek_serve.demo import packaged_tokenizer_dir
from tests.e2e.conftest import MODEL_NAME, LiveServer

BOS, EOS, EOT, FIM_HOLE, FIM_BEGIN, FIM_END = 32013, 32014, 32021, 32015, 32016, 32017
NO_EOS = {str(EOS): -100}  # random weights could emit EOS early; keep lengths predictable


@pytest.fixture(scope="module")
def golden_tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(packaged_tokenizer_dir("deepseek-coder"))


def test_health_models_version(server: LiveServer, client: OpenAI) -> None:
    assert httpx.get(f"{server.base_url}/health").json() == {
        "status": "ok",
        "requests_in_engine": 0,
    }
    (model,) = client.models.list().data
    assert model.id == MODEL_NAME and model.model_extra["max_model_len"] == 4096
    assert httpx.get(f"{server.base_url}/version").json()["vllm"]


def test_hub_tokenizer_files_are_repaired_and_served_with_golden_ids(
    server: LiveServer, client: OpenAI
) -> None:
    # The trap is real here: the checkpoint's own files load wrong under this transformers.
    raw = AutoTokenizer.from_pretrained(server.model_dir)
    assert raw.encode("Hello world") != [BOS, 17535, 1835]
    assert "repaired" in server.log().lower()
    assert "noise" in server.log()  # the demo model says its output is noise

    r = client.completions.create(
        model=MODEL_NAME, prompt="Hello world", max_tokens=1, echo=True, logprobs=0
    )
    assert r.usage.prompt_tokens == 3  # BOS + golden [17535, 1835]
    # prompt tokens as decoded by the *engine's* tokenizer
    assert r.choices[0].logprobs.tokens[:3] == ["<｜begin▁of▁sentence｜>", "Hello", " world"]


def test_completion_text_is_detokenized_like_deepseek(client: OpenAI, golden_tokenizer) -> None:  # type: ignore[no-untyped-def]
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="def quicksort(xs):\n",
        max_tokens=24,
        logprobs=0,
        logit_bias=NO_EOS,
        seed=5,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 24
    assert "".join(choice.logprobs.tokens) == choice.text


def test_fim_suffix_equals_explicit_fim_ids(client: OpenAI, golden_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    enc = lambda s: golden_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = [BOS, FIM_BEGIN, *enc(prefix), FIM_HOLE, *enc(suffix), FIM_END]
    common = {"model": MODEL_NAME, "max_tokens": 12, "temperature": 0, "logit_bias": NO_EOS}
    fim = client.completions.create(prompt=prefix, suffix=suffix, **common)
    explicit = client.completions.create(prompt=ids, **common)
    assert fim.usage.prompt_tokens == len(ids)
    assert fim.choices[0].text == explicit.choices[0].text != ""


def test_chat_uses_the_deepseek_template(client: OpenAI, golden_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "Write a function that reverses a string."}]
    rendered = golden_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    ids = golden_tokenizer.encode(rendered, add_special_tokens=False)
    assert ids.count(BOS) == 1
    common = {"model": MODEL_NAME, "max_tokens": 10, "temperature": 0}
    chat = client.chat.completions.create(messages=messages, logit_bias={str(EOT): -100}, **common)
    plain = client.completions.create(prompt=ids, logit_bias={str(EOT): -100, **NO_EOS}, **common)
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].message.content == plain.choices[0].text


def test_stop_tokens_follow_the_variant(client: OpenAI) -> None:
    force_eot = {str(EOT): 100}
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        logit_bias=force_eot,
    )
    assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens == 1
    # a plain completion with an instruct checkpoint ends a turn at <|EOT|> (as vLLM) ...
    cmpl = client.completions.create(
        model=MODEL_NAME, prompt="x", max_tokens=8, logit_bias=force_eot
    )
    assert cmpl.choices[0].finish_reason == "stop" and cmpl.usage.completion_tokens == 1
    # ... fill-in-the-middle runs through it ...
    cmpl = client.completions.create(
        model=MODEL_NAME, prompt="x", suffix="y", max_tokens=8, logit_bias=force_eot
    )
    assert cmpl.choices[0].finish_reason == "length" and cmpl.usage.completion_tokens == 8
    # ... and both stop at <｜end▁of▁sentence｜>
    cmpl = client.completions.create(
        model=MODEL_NAME, prompt="x", max_tokens=8, logit_bias={str(EOS): 100}
    )
    assert cmpl.choices[0].finish_reason == "stop" and cmpl.usage.completion_tokens == 1
    # user stop_token_ids add to the variant's
    cmpl = client.completions.create(
        model=MODEL_NAME,
        prompt="x",
        max_tokens=8,
        logit_bias={"1835": 100},
        extra_body={"stop_token_ids": [1835]},
    )
    assert cmpl.choices[0].finish_reason == "stop" and cmpl.usage.completion_tokens == 1


def test_streaming_equals_non_streaming_with_usage(client: OpenAI) -> None:
    common = {
        "model": MODEL_NAME,
        "prompt": "import os\n",
        "max_tokens": 20,
        "seed": 42,
        "temperature": 1.0,
        "n": 2,
        "logit_bias": NO_EOS,
    }
    full = client.completions.create(**common)
    texts = {0: "", 1: ""}
    finishes: dict[int, list[str]] = {0: [], 1: []}
    usage = None
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **common)
    )
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
        if choice.finish_reason:
            finishes[choice.index].append(choice.finish_reason)
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert texts == {c.index: c.text for c in full.choices}
    assert texts[0] != texts[1]
    assert finishes == {0: ["length"], 1: ["length"]}
    assert usage.completion_tokens == 40 and usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_streaming(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        stream=True,
        logit_bias={str(EOT): -100},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_raw_sse_framing(server: LiveServer) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "x",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    text = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30).text
    frames = text.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    for frame in frames[:-2]:
        assert frame.startswith("data: ")
        json.loads(frame[len("data: ") :])


def test_stop_string(client: OpenAI) -> None:
    common = {
        "model": MODEL_NAME,
        "prompt": "class Stack:\n",
        "temperature": 0,
        "logit_bias": NO_EOS,
    }
    full = client.completions.create(max_tokens=16, **common).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    stopped = client.completions.create(max_tokens=16, stop=[stop], **common).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_streaming_disconnect_aborts_engine_request(server: LiveServer) -> None:
    body = {
        "model": MODEL_NAME,
        "prompt": "x",
        "max_tokens": 3000,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            assert next(lines).startswith("data: ")
            next(lines)
        assert server.requests_in_engine() == 1
    # the client is gone: the engine must drop the request at once
    assert server.wait_engine_idle(timeout=3.0) < 3.0


def test_non_streaming_disconnect_aborts_engine_request(server: LiveServer) -> None:
    body = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 3000, "logit_bias": NO_EOS}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=1.0)
    server.wait_engine_idle(timeout=3.0)


BAD_REQUESTS = [
    ({"prompt": [BOS, 32100]}, 400, "prompt[1]"),  # past the tokenizer, inside the embedding
    ({"prompt": [BOS, 40000]}, 400, "prompt[1]"),  # past both
    ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ({"prompt": "word " * 5000}, 400, "prompt"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"prompt": "x", "max_tokens": 2, "extra_body": {"min_tokens": 5}}, 400, "min_tokens"),
    ({"prompt": "x", "max_tokens": 2, "temperature": 0, "n": 3}, 400, None),  # vLLM refuses
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_REQUESTS)
def test_bad_completions_are_rejected_and_engine_keeps_serving(
    server: LiveServer, client: OpenAI, body: dict, status: int, param: str
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**{"model": MODEL_NAME, **body})
    assert info.value.status_code == status
    error = info.value.body
    assert isinstance(error, dict) and error["message"]
    if param is not None:
        assert error["param"] == param
    ok = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")
    assert server.requests_in_engine() == 0


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "wizard", "content": "hi"}],
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
            }
        ],
    ],
)
def test_bad_chat_messages_are_rejected(client: OpenAI, messages: list) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=messages)


def test_concurrent_streams_all_complete(server: LiveServer) -> None:
    async def one(ac: openai.AsyncOpenAI, i: int) -> int:
        stream = await ac.completions.create(
            model=MODEL_NAME, prompt=f"# task {i}\n", max_tokens=16, stream=True, logit_bias=NO_EOS
        )
        return sum(
            [1 async for chunk in stream if chunk.choices and chunk.choices[0].finish_reason]
        )

    async def run() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(one(ac, i) for i in range(16)))

    assert asyncio.run(run()) == [1] * 16
    assert server.requests_in_engine() == 0


@pytest.mark.parametrize(
    ("content", "content_type", "param"),
    [
        (b'{"prompt": "x",', "application/json", None),  # malformed JSON
        (b'{"prompt": "x"}', "text/plain", None),  # wrong content type
        (b'{"prompt": "x", "max_tokens": "many"}', "application/json", "max_tokens"),
        (b'{"prompt": "x", "best_of": 2, "n": 1}', "application/json", "best_of"),
        (b'{"prompt": "x", "n": 0}', "application/json", "n"),
    ],
)
def test_raw_bad_bodies(
    server: LiveServer, content: bytes, content_type: str, param: str | None
) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        content=content,
        headers={"content-type": content_type},
        timeout=10,
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert httpx.get(f"{server.base_url}/health").status_code == 200
