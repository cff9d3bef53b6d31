"""DeepSeek-Coder-V2 (MLA attention + MoE) end to end on the real CPU engine."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from deepseek_serve.demo import build_demo_model, packaged_tokenizer_dir
from tests.e2e.conftest import LiveServer, start_server

BOS, EOS, FIM_HOLE, FIM_BEGIN, FIM_END = 100000, 100001, 100002, 100003, 100004
MODEL = "tiny-coder-v2"


@pytest.fixture(scope="module")
def v2(server_v2: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{server_v2.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_v2_variant_is_detected(server_v2: LiveServer) -> None:
    assert "deepseek-coder-v2 instruct" in server_v2.log()


def test_v2_chat_template_and_eos_stop(v2: OpenAI) -> None:
    tok = AutoTokenizer.from_pretrained(packaged_tokenizer_dir("deepseek-coder-v2"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sort a list."},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("User: Sort a list.\n\nAssistant:")
    ids = tok.encode(rendered, add_special_tokens=False)
    common = {"model": MODEL, "max_tokens": 8, "temperature": 0, "logit_bias": {str(EOS): -100}}
    chat = v2.chat.completions.create(messages=messages, **common)
    plain = v2.completions.create(prompt=ids, **common)
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].message.content == plain.choices[0].text
    stopped = v2.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, logit_bias={str(EOS): 100}
    )
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1


def test_v2_fim(v2: OpenAI) -> None:
    tok = AutoTokenizer.from_pretrained(packaged_tokenizer_dir("deepseek-coder-v2"))
    prefix, suffix = "def area(r):\n    ", "\n"
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    ids = [BOS, FIM_BEGIN, *enc(prefix), FIM_HOLE, *enc(suffix), FIM_END]
    common = {"model": MODEL, "max_tokens": 8, "temperature": 0, "logit_bias": {str(EOS): -100}}
    fim = v2.completions.create(prompt=prefix, suffix=suffix, **common)
    explicit = v2.completions.create(prompt=ids, **common)
    assert fim.usage.prompt_tokens == len(ids)
    assert fim.choices[0].text == explicit.choices[0].text


def _engine_core(server: LiveServer) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    raise AssertionError("no EngineCore process found")


@pytest.fixture
def doomed(tmp_path: Path) -> Iterator[LiveServer]:
    """A V2 server of the test's own: the test kills its engine."""
    model = build_demo_model("demo-v2", tmp_path / "tiny-coder-v2-lite-instruct")
    yield from start_server(tmp_path, model, MODEL, extra=("--engine-death-exit-delay", "5"))


def test_engine_death_mid_stream(doomed: LiveServer) -> None:
    body = {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": 3000,
        "stream": True,
        "logit_bias": {str(EOS): -100},
    }
    frames: list[str] = []
    with httpx.stream("POST", f"{doomed.base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            frames.append(line)
            if len(frames) == 3:
                _engine_core(doomed).send_signal(signal.SIGKILL)
    assert frames[-1] == "data: [DONE]"
    error = json.loads(frames[-2][len("data: ") :])["error"]
    assert error["type"] == "service_unavailable_error" and error["code"] == "engine_dead"
    assert "Traceback" not in "\n".join(frames)

    deadline = time.monotonic() + 10
    while httpx.get(f"{doomed.base_url}/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(f"{doomed.base_url}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    # then the process exits non-zero by itself, so a supervisor restarts it
    doomed.expect_failure = True
    code = doomed.process.wait(timeout=30)
    assert code not in (0, -signal.SIGTERM), code
    assert "the inference engine died" in doomed.log()
