"""Drop-in behaviours of the OpenAI / vLLM / DeepSeek-API side, over the real vLLM CPU engine,
through the official ``openai`` client (sync and async, streaming) where a client would use it.

The model has random weights: tests force the tokens that matter with ``logit_bias`` and assert
shapes and stops, never texts.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.e2e

BOS, EOS, EOT = 32013, 32014, 32021
CHAT = [{"role": "user", "content": "Write a function."}]


def test_plain_completion_stops_at_eot_and_fim_runs_through_it(client: OpenAI) -> None:
    # Continue's vLLM provider posts the chat template it rendered itself to /v1/completions
    # (continuedev/continue core/llm/llms/Vllm.ts): the turn must end at <|EOT|>, as in vLLM.
    plain = client.completions.create(
        model=MODEL_NAME, prompt="def f():", max_tokens=5, logit_bias={str(EOT): 100}
    )
    assert plain.choices[0].finish_reason == "stop"
    assert plain.choices[0].model_extra.get("stop_reason") in (None, EOT)
    assert plain.usage.completion_tokens == 1 and plain.choices[0].text == ""
    fim = client.completions.create(
        model=MODEL_NAME,
        prompt="def f():",
        suffix="\n",
        max_tokens=3,
        logit_bias={str(EOT): 100},
        extra_body={"return_token_ids": True},
    )
    # FIM keeps DeepSeek's README stop, end-of-sentence only
    assert fim.choices[0].finish_reason == "length"
    assert fim.choices[0].model_extra["token_ids"] == [EOT, EOT, EOT]


def test_logprobs_zero_gives_the_sampled_token(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_NAME, prompt="x = ", max_tokens=4, logprobs=0, logit_bias={str(EOS): -100}
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top == {token: value}
    two = client.completions.create(
        model=MODEL_NAME, prompt="x = ", max_tokens=2, logprobs=2, logit_bias={str(EOS): -100}
    )
    lp = two.choices[0].logprobs
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert token in top and 2 <= len(top) <= 3


def test_structured_outputs_constrain_the_text(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Answer:",
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert r.choices[0].text in ("yes", "no") and r.choices[0].finish_reason == "stop"
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Digits:",
        max_tokens=10,
        extra_body={"structured_outputs": {"regex": "[0-9]{3}"}},
    )
    assert re.fullmatch("[0-9]{3}", r.choices[0].text), r.choices[0].text
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=CHAT,
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        extra_body={"structured_outputs": {"disable_any_whitespace": True, "json": schema}},
    )
    # vLLM's CPU backend does not honour disable_any_whitespace, and random weights favour
    # whitespace: the text is the schema's JSON with whitespace in it, whole when it stopped,
    # a prefix of it when max_tokens cut it.
    content = chat.choices[0].message.content or ""
    compact = re.sub(r"\s", "", content)
    assert compact and any(v.startswith(compact) for v in ('{"ok":true}', '{"ok":false}')), content
    if chat.choices[0].finish_reason == "stop":
        assert json.loads(content) in ({"ok": True}, {"ok": False})


def test_a_bad_grammar_is_a_400_and_the_engine_keeps_serving(
    server: LiveServer, client: OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError):
        client.completions.create(
            model=MODEL_NAME,
            prompt="x",
            max_tokens=2,
            extra_body={"structured_outputs": {"regex": "(unclosed"}},
        )
    assert client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1).choices
    assert server.requests_in_engine() == 0


def test_tokenize_matches_what_generation_sends(server: LiveServer, client: OpenAI) -> None:
    r = httpx.post(f"{server.base_url}/tokenize", json={"prompt": "Hello world"}).json()
    assert r == {
        "count": 3,
        "max_model_len": 4096,
        "tokens": [BOS, 17535, 1835],
        "token_strs": None,
    }
    chat = httpx.post(f"{server.base_url}/tokenize", json={"messages": CHAT}).json()
    done = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=1)
    assert chat["count"] == done.usage.prompt_tokens
    back = httpx.post(f"{server.base_url}/detokenize", json={"tokens": chat["tokens"]}).json()
    assert (
        back["prompt"].startswith("<｜begin▁of▁sentence｜>")
        and "Write a function." in back["prompt"]
    )


def test_deepseek_beta_fim_through_the_openai_client(server: LiveServer) -> None:
    # Continue's deepseek provider: FIM to {apiBase}beta/completions, apiBase without /v1
    # (continuedev/continue packages/openai-adapters/src/apis/DeepSeek.ts).
    beta = OpenAI(base_url=f"{server.base_url}/beta", api_key="unused", max_retries=0)
    # long enough to fill whole KV blocks, so that vLLM's prefix cache can hold it
    prefix = "def fib(a):\n" + "".join(f"    # step {i} of the recursion\n" for i in range(30))
    body = {"prompt": prefix, "suffix": "    return fib(a-1) + fib(a-2)"}
    first = beta.completions.create(model=MODEL_NAME, max_tokens=4, **body)  # type: ignore[call-overload]
    usage = first.usage.model_extra
    assert usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"] == (
        first.usage.prompt_tokens
    )
    again = beta.completions.create(model=MODEL_NAME, max_tokens=4, **body)  # type: ignore[call-overload]
    hit = again.usage.model_extra["prompt_cache_hit_tokens"]
    assert 0 < hit < again.usage.prompt_tokens  # the same prompt again: from the prefix cache
    assert again.usage.model_extra["prompt_cache_miss_tokens"] == again.usage.prompt_tokens - hit
    assert first.system_fingerprint
    stream = beta.completions.create(  # type: ignore[call-overload]
        model=MODEL_NAME, max_tokens=4, stream=True, **body
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)  # no usage-only chunk unless asked (Continue indexes [0])
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_chat_alias_async_stream_with_continuous_usage(server: LiveServer) -> None:
    # Continue's deepseek provider chats through the openai SDK at {apiBase}chat/completions.
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL_NAME,
        messages=CHAT,  # type: ignore[arg-type]
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        logit_bias={str(EOT): -100},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].usage.completion_tokens == 0  # the role chunk comes before any token
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].system_fingerprint and not chunks[1].system_fingerprint
    await client.close()


async def test_unknown_fields_and_llama_cpp_fields_through_extra_body(server: LiveServer) -> None:
    # llama.vim's instruct warm-up and request (ggml-org/llama.vim autoload/llama.vim,
    # llama#inst_send): llama.cpp fields on /v1/chat/completions, model "".
    client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    warm = await client.chat.completions.create(
        model="",
        messages=CHAT,  # type: ignore[arg-type]
        extra_body={"id_slot": 0, "samplers": [], "n_predict": 0, "cache_prompt": True,
                    "response_fields": [""]},
    )  # fmt: skip
    assert warm.choices[0].message.content == "" and warm.usage.completion_tokens == 0
    stream = await client.chat.completions.create(
        model="",
        messages=CHAT,  # type: ignore[arg-type]
        stream=True,
        extra_body={"id_slot": 0, "min_p": 0.1, "samplers": ["min_p", "temperature"],
                    "cache_prompt": True, "n_predict": 2},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "ignored: cache_prompt, id_slot, samplers" in server.log()
    await client.close()


def test_return_token_ids_and_tokens_as_ids(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Hello world",
        max_tokens=3,
        logprobs=0,
        logit_bias={str(EOS): -100},
        extra_body={"return_token_ids": True, "return_tokens_as_token_ids": True},
    )
    choice = r.choices[0].model_extra
    assert choice["prompt_token_ids"] == [BOS, 17535, 1835] and len(choice["token_ids"]) == 3
    assert r.choices[0].logprobs.tokens == [f"token_id:{i}" for i in choice["token_ids"]]


def test_prompt_logprobs_and_continued_assistant_turn(server: LiveServer, client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_NAME,
        prompt="Hello world",
        max_tokens=1,
        extra_body={"prompt_logprobs": 1},
    )
    lps = r.choices[0].model_extra["prompt_logprobs"]
    assert lps[0] is None and len(lps) == 3
    hello = lps[1]["17535"]
    assert hello["decoded_token"] == "Hello" and hello["rank"] >= 1 and hello["logprob"] <= 0
    assert any(v["rank"] == 1 for v in lps[1].values())
    # a prefilled assistant turn, continued and echoed (vLLM's chat extensions)
    messages = [*CHAT, {"role": "assistant", "content": "def f("}]
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=3,
        logit_bias={str(EOT): -100},
        extra_body={"continue_final_message": True, "echo": True, "add_generation_prompt": False},
    )
    assert chat.choices[0].message.content.startswith("def f(")
    tok = httpx.post(
        f"{server.base_url}/tokenize",
        json={"messages": messages, "continue_final_message": True, "add_generation_prompt": False},
    ).json()
    assert chat.usage.prompt_tokens == tok["count"]
    text = httpx.post(f"{server.base_url}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert text["prompt"].endswith("### Response:\ndef f(")
