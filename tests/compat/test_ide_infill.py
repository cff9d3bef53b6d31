"""The llama.cpp editor plugins' /infill traffic and llm-ls's llamacpp backend, against the real
server over real vLLM, read the way each plugin reads it."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.clients import FIM_BEGIN, FIM_END, FIM_HOLE
from tests.e2e.conftest import MODEL_NAME, LiveServer
from tests.plugins import vim_body, vscode_body


def vscode_completions(body: Any) -> list[str]:
    """llama.vscode src/completion.ts getComplFromContent: one object or an array."""
    if "content" in body:
        return [body["content"] or ""]
    return [c["content"] or "" for c in body]


def test_llama_vscode_three_completions_and_warmup(server: LiveServer) -> None:
    # Source: ggml-org/llama.vscode src/llama-server.ts (createRequestPayload: n_cmpl is
    # max_parallel_completions, 3 by default; updateExtraContext warms the cache)
    url = f"{server.base_url}/infill"
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0,
            "input_extra": [{"text": "export const y = 2;\n", "time": 1, "filename": "/p/y.ts"}],
            "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500,
            "t_max_predict_ms": 1}  # fmt: skip
    r = httpx.post(url, json=warm, timeout=60)
    assert r.status_code == 200 and r.json()["content"] == ""
    body = vscode_body(id_slot=0, n_cmpl=3, n_predict=12, t_max_predict_ms=2500)
    r = httpx.post(url, json=body, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(vscode_completions(results)) == 3
    for i, result in enumerate(results):
        assert result["index"] == i and result["stop"] is True
        assert 0 <= result["tokens_predicted"] <= 12
        assert result["generation_settings"]["n_ctx"] == 4096  # src/statusbar.ts reads it
        assert isinstance(result["tokens_cached"], int) and result["timings"]["predicted_n"] >= 0
    one = httpx.post(url, json=vscode_body(n_predict=6), timeout=120).json()
    assert vscode_completions(one) == [one["content"]]  # one completion: one object
    server.wait_engine_idle()


def test_llama_vim_reads_compact_single_line_json(server: LiveServer) -> None:
    # Source: ggml-org/llama.vim autoload/llama.vim s:fim_on_response: the raw body must match
    # '"content"\s*:"' (no space after the colon) and be one line (Vim's out_cb is per line).
    body = vim_body(model="", id_slot=0)
    # llama.vim always sends "Authorization: Bearer " (its key check is always true); the
    # server's HTTP parser trims the trailing space, which httpx will not send.
    r = httpx.post(f"{server.base_url}/infill", json=body, timeout=120,
                   headers={"Authorization": "Bearer"})  # fmt: skip
    raw = r.text
    assert r.status_code == 200 and "\n" not in raw.strip()
    assert re.match(r"^\s*{", raw) and re.search(r'"content"\s*:"', raw)
    resp = json.loads(raw)
    timing_keys = [k for k in resp if k.startswith("timings/")]
    assert len(timing_keys) == 8  # the info line is shown when all of them exist
    assert resp.get("tokens_cached", 0) >= 0
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": [],
            "prompt": "", "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False,
            "cache_prompt": True, "t_max_prompt_ms": 1, "t_max_predict_ms": 1,
            "response_fields": [""], "model": ""}  # fmt: skip
    assert httpx.post(f"{server.base_url}/infill", json=warm, timeout=60).json() == {}
    server.wait_engine_idle()


def test_llm_ls_llamacpp_backend_uses_v1_completions(server: LiveServer) -> None:
    # Source: huggingface/llm-ls crates/llm-ls/src/main.rs build_url (llamacpp -> /v1/completions)
    # and backend.rs build_body / parse (choices[0].text), llm.nvim's default request_body.
    prompt = f"{FIM_BEGIN}def square(x):\n    {FIM_HOLE}\n{FIM_END}"
    body = {"temperature": 0.2, "top_p": 0.95, "prompt": prompt, "model": MODEL_NAME,
            "stream": False, "max_tokens": 8}  # fmt: skip
    headers = {"User-Agent": "llm-ls/0.5.3; rust/unknown; ide/Neovim"}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert isinstance(choice["text"], str)
    server.wait_engine_idle()
