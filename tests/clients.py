"""What IDE plugins send to llama.cpp and Ollama servers, and how each reads the answer.

Each builder returns (path, headers, body) exactly as the client builds them; each reader parses
the raw answer the way the client's code does (and fails where the client would fail). The
source file is named on each; commits are listed in /work/research/clients.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
EOS = "<｜end▁of▁sentence｜>"
Request = tuple[str, dict[str, str], dict[str, Any]]


def deepseek_fim(prefix: str, suffix: str) -> str:
    """DeepSeek's FIM template as the clients render it themselves.
    Source: continuedev/continue core/autocomplete/templating/AutocompleteTemplate.ts"""
    return f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}"


# Source: continuedev/continue core/autocomplete/templating/AutocompleteTemplate.ts
CONTINUE_STOPS = [FIM_BEGIN, FIM_HOLE, FIM_END, "//", EOS]


# --- Continue -----------------------------------------------------------------------------


def continue_llamacpp(prompt: str, n_predict: int = 4096) -> Request:
    """Source: continuedev/continue core/llm/llms/LlamaCpp.ts (no key: "Bearer undefined";
    n_predict defaults to DEFAULT_MAX_TOKENS 4096, core/llm/constants.ts)."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer undefined"}
    body = {"model": "deepseek-coder-6.7b-base", "prompt": prompt, "stream": True,
            "n_predict": n_predict, "stop": CONTINUE_STOPS, "temperature": 0.01}  # fmt: skip
    return "/completion", headers, body


def _continue_options(num_predict: int) -> dict[str, Any]:
    # Source: continuedev/continue core/llm/llms/Ollama.ts _getModelFileParams (undefined
    # fields are dropped by JSON.stringify)
    return {"temperature": 0.01, "num_predict": num_predict, "stop": CONTINUE_STOPS,
            "num_ctx": 8192, "num_thread": 8, "use_mmap": True}  # fmt: skip


def continue_ollama_fim(model: str, prefix: str, suffix: str, num_predict: int = 4096) -> Request:
    """Source: continuedev/continue core/llm/llms/Ollama.ts _streamFim (no raw, no stream)."""
    body = {"model": model, "prompt": prefix, "suffix": suffix,
            "options": _continue_options(num_predict), "keep_alive": 1800}  # fmt: skip
    return "/api/generate", {"Content-Type": "application/json"}, body


def continue_ollama_complete(model: str, prompt: str, num_predict: int = 4096) -> Request:
    """Source: continuedev/continue core/llm/llms/Ollama.ts _streamComplete (raw: true)."""
    body = {"model": model, "prompt": prompt, "raw": True,
            "options": _continue_options(num_predict), "keep_alive": 1800}  # fmt: skip
    return "/api/generate", {"Content-Type": "application/json"}, body


def continue_ollama_chat(model: str, messages: list[dict[str, Any]], stream: bool) -> Request:
    """Source: continuedev/continue core/llm/llms/Ollama.ts _streamChat."""
    body = {"model": model, "messages": messages, "options": _continue_options(32),
            "keep_alive": 1800, "stream": stream}  # fmt: skip
    return "/api/chat", {"Content-Type": "application/json"}, body


def continue_ollama_show(model: str) -> Request:
    """Source: continuedev/continue core/llm/llms/Ollama.ts ensureModelInfo."""
    return "/api/show", {"Content-Type": "application/json"}, {"name": model}


def continue_read_sse(raw: str) -> list[str]:
    """streamSse (packages/fetch/src/stream.ts) then LlamaCpp.ts: split on \\n, ``data:``
    lines, an ``error`` key throws; yields ``content`` when truthy. ``: ping`` ends it."""
    out = []
    for line in raw.split("\n"):
        if line.startswith(": ping"):
            raise AssertionError("a ': ping' comment ends Continue's stream early")
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].lstrip()
        if data == "[DONE]":
            break
        value = json.loads(data)  # "Malformed JSON sent from server" otherwise
        if "error" in value:
            raise AssertionError(f"Error streaming response: {value['error']}")
        if value.get("content"):
            out.append(value["content"])
    return out


def continue_read_ndjson(raw: str, field: str = "response") -> list[Any]:
    """Ollama.ts generate parsing: split on \\n, the last piece without \\n is dropped, empty
    lines skipped, every line JSON.parse'd, ``"error" in j`` throws. ``field`` "message":
    every line is destructured as ``{role, content} = res.message`` (chat)."""
    *lines, _rest = raw.split("\n")
    out = []
    for line in lines:
        if not line:
            continue
        j = json.loads(line)
        if "error" in j:
            raise AssertionError(j["error"])
        if field == "message":
            message = j["message"]  # TypeError in Continue when missing
            assert message["role"] == "assistant"
            out.append(message["content"])
        else:
            out.append(j[field])
    return out


def continue_reads_fim_from_show(body: dict[str, Any]) -> tuple[bool, int | None]:
    """Ollama.ts: FIM is on when ``template`` holds ".Suffix"; ``num_ctx`` from parameters."""
    num_ctx = None
    for line in body.get("parameters", "").split("\n"):
        key, _, value = line.strip().partition(" ")
        if key == "num_ctx":
            num_ctx = int(value.strip())
        elif key == "stop":
            json.loads(value.strip())  # Continue JSON.parse's each stop value
    return ".Suffix" in body.get("template", ""), num_ctx


# --- Tabby ---------------------------------------------------------------------------------


def tabby_llamacpp(prompt: str, n_predict: int = 256) -> Request:
    """Source: TabbyML/tabby crates/http-api-bindings/src/completion/llama.rs (every field
    present; seed is now in ms, crates/tabby-inference/src/code.rs)."""
    body = {"seed": 1719999999999, "prompt": prompt, "n_predict": n_predict, "temperature": 0.1,
            "stream": True, "penalty_last_n": 0, "presence_penalty": 0.0}  # fmt: skip
    return "/completion", {"Content-Type": "application/json"}, body


def tabby_read_llamacpp(status: int, content_type: str, raw: str) -> str:
    """reqwest-eventsource 0.6 check_response (status exactly 200, text/event-stream), then
    llama.rs: every data is ``{content: String, stop: bool}`` (``unwrap()`` panics otherwise),
    the loop breaks on ``stop``."""
    assert status == 200, "InvalidStatusCode: Tabby completes nothing"
    assert content_type.split(";")[0].strip() == "text/event-stream", "InvalidContentType"
    text = ""
    for event in raw.split("\n\n"):
        if not event.startswith("data:"):
            continue
        chunk = json.loads(event[len("data:") :].strip())
        assert isinstance(chunk["content"], str) and isinstance(chunk["stop"], bool), chunk
        text += chunk["content"]
        if chunk["stop"]:
            return text
    raise AssertionError("the stream ended without a stop: true chunk")


# Tabby's u64 seed (milliseconds) as ollama-rs's i32.
TABBY_SEED_I32 = (1719999999999 + 2**31) % 2**32 - 2**31


def tabby_ollama_generate(model: str, prompt: str, num_predict: int = 256) -> tuple[str, bytes]:
    """ollama-rs @56e8157 GenerationRequest as Tabby sends it: ``.body(string)`` (no
    Content-Type), null fields serialized, seed cast to i32 (negative here).
    Source: TabbyML/tabby crates/ollama-api-bindings/src/completion.rs"""
    options = {"mirostat": None, "mirostat_eta": None, "mirostat_tau": None, "num_ctx": None,
               "num_gqa": None, "num_gpu": None, "num_thread": None, "repeat_last_n": 0,
               "repeat_penalty": None, "temperature": 0.1, "seed": TABBY_SEED_I32,
               "stop": None, "tfs_z": None, "num_predict": num_predict, "top_k": None,
               "top_p": None}  # fmt: skip
    body = {"model": model, "prompt": prompt, "images": [], "options": options, "system": None,
            "template": "{{ .Prompt }}", "context": None, "format": None, "keep_alive": None,
            "stream": True}  # fmt: skip
    return "/api/generate", json.dumps(body, ensure_ascii=False).encode()


def tabby_read_ollama(chunks: Iterable[bytes]) -> str:
    """ollama-rs generate_stream: each transport chunk is parsed on its own as a sequence of
    JSON values; a value that fails (a line split across chunks, a count over u16, a missing
    field) is dropped silently. Required: model, created_at, response (str), done (bool)."""
    text = ""
    for chunk in chunks:
        decoder, s, pos = json.JSONDecoder(), chunk.decode(), 0
        while pos < len(s):
            while pos < len(s) and s[pos].isspace():
                pos += 1
            if pos == len(s):
                break
            value, pos = decoder.raw_decode(s, pos)  # raises where ollama-rs drops data
            for key, kind in (("model", str), ("created_at", str), ("response", str),
                              ("done", bool)):  # fmt: skip
                assert isinstance(value.get(key), kind), (key, value)
            for key in ("prompt_eval_count", "eval_count"):
                assert 0 <= value.get(key, 0) <= 65535, (key, value)  # u16 in ollama-rs
            text += value["response"]
    return text


def tabby_ollama_show(model: str) -> Request:
    """Source: TabbyML/tabby crates/ollama-api-bindings/src/model.rs (ModelInfo, all
    defaults; a body saying "not found" means the model is unavailable)."""
    return "/api/show", {"Content-Type": "application/json"}, {"name": model}


def tabby_reads_tags(body: dict[str, Any]) -> str:
    """model.rs without model_name: ``models[0].name``; LocalModel needs name, modified_at
    (string) and size (u64)."""
    first = body["models"][0]
    assert isinstance(first["modified_at"], str) and isinstance(first["size"], int)
    assert first["size"] >= 0
    name: str = first["name"]
    return name


# --- twinny --------------------------------------------------------------------------------


def twinny_ollama_fim(model: str, prompt: str, num_predict: int = 512) -> Request:
    """Source: twinnydotdev/twinny src/extension/provider-options.ts createStreamRequestBodyFim
    (ollama); headers from src/extension/providers/completion.ts (empty Authorization)."""
    body = {"model": model, "prompt": prompt, "stream": True, "keep_alive": "5m",
            "options": {"temperature": 0.2, "num_predict": num_predict}}  # fmt: skip
    return "/api/generate", {"Content-Type": "application/json", "Authorization": ""}, body


def twinny_llamacpp_fim(prompt: str, max_tokens: int = 512) -> Request:
    """Source: twinnydotdev/twinny src/extension/provider-options.ts (llamacpp: no n_predict,
    no model; max_tokens instead)."""
    body = {"prompt": prompt, "stream": True, "temperature": 0.2, "max_tokens": max_tokens}
    return "/completion", {"Content-Type": "application/json", "Authorization": ""}, body


def twinny_read(raw: str, field: str) -> str:
    """src/extension/llm.ts + utils.ts safeParseJsonResponse / getFimDataFromProvider: split
    on \\n, ``data:`` lines parsed after the prefix, other lines whole; failures skipped.
    ``field``: "response" (ollama), "content" (llamacpp)."""
    text = ""
    for line in raw.split("\n"):
        payload = line.split("data:")[1] if line.startswith("data:") else line
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        text += data.get(field) or ""
    return text


# --- llm-ls --------------------------------------------------------------------------------


def llmls_ollama(model: str, prompt: str) -> Request:
    """Source: huggingface/llm-ls crates/llm-ls/src/backend.rs build_body (ollama) with
    llm.nvim's default request_body (lua/llm/config.lua): no raw, no num_predict."""
    body = {"options": {"temperature": 0.2, "top_p": 0.95}, "prompt": prompt, "model": model,
            "stream": False}  # fmt: skip
    return "/api/generate", {"Content-Type": "application/json", "User-Agent": "llm-ls/0.5.3"}, body


def llmls_read_ollama(body: Any) -> str:
    """backend.rs: untagged ``{response}`` or ``{error: String}``; anything else fails."""
    assert isinstance(body, dict)
    if "error" in body:
        assert isinstance(body["error"], str)
        raise LookupError(body["error"])
    text: str = body["response"]
    return text
