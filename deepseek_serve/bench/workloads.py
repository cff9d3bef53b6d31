"""Benchmark workloads: lists of requests, built reproducibly from a seed.

``random``  prompts of given token lengths, built as ``vllm bench serve --dataset-name random``
            builds them (consecutive vocabulary ids, decoded, re-encoded and cut to length).
``chat``    multi-turn conversations about code from a repository (``/v1/chat/completions``).
``fim``     fill-in-the-middle with repository context: other files of the repository, each
            under a DeepSeek ``#path`` header, then the file being edited around a cursor.
``editor``  an editor typing trace: per session, one FIM request per keystroke on the same file as
            the cursor moves; the next keystroke cancels a request that has not finished.
``jsonl``   one OpenAI request body per line (``messages`` goes to chat, anything else to
            completions; an ``endpoint`` key overrides).

FIM prompts are rendered client-side in DeepSeek's layout and sent as plain completions by default,
so any OpenAI-compatible server (vLLM's refuses ``suffix`` for DeepSeek) serves the same tokens;
``fim_suffix=True`` sends ``prompt``/``suffix`` instead, for servers that render FIM themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

FIM_BEGIN = "<｜fim▁begin｜>"
FIM_HOLE = "<｜fim▁hole｜>"
FIM_END = "<｜fim▁end｜>"

WORKLOADS = ("random", "chat", "fim", "editor", "jsonl")


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the workloads use."""

    vocab_size: int
    all_special_ids: list[int]

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...

    def num_special_tokens_to_add(self) -> int: ...


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request: its endpoint and body (the runner adds model, stream and stream options)."""

    endpoint: str
    body: dict[str, Any]
    prompt_len: int  # client-side count; the server's usage replaces it when given
    output_len: int
    session: int | None = None  # editor: requests of a session run in order, one at a time
    at: float = 0.0  # editor: seconds after the session starts (the keystroke's time)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    name: str = "random"
    num_prompts: int = 100
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    prefix_len: int = 0
    seed: int = 0
    repo_dir: Path | None = None  # chat / fim / editor source files (default: this package)
    fim_suffix: bool = False
    chat_turns: int = 2
    sessions: int = 1  # editor sessions typing at once
    keystroke_ms: float = 120.0  # editor: mean gap between keystrokes
    pause_every: int = 12  # editor: a pause after about this many keystrokes
    pause_ms: float = 800.0  # editor: mean length of such a pause
    jsonl_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_workload(spec: WorkloadSpec, tokenizer: Tokenizer) -> list[BenchRequest]:
    rng = np.random.default_rng(spec.seed)
    if spec.name == "random":
        return random_requests(spec, tokenizer, rng)
    if spec.name == "chat":
        return chat_requests(spec, tokenizer, rng)
    if spec.name == "fim":
        return fim_requests(spec, tokenizer, rng)
    if spec.name == "editor":
        return editor_requests(spec, tokenizer, rng)
    if spec.name == "jsonl":
        if spec.jsonl_path is None:
            raise ValueError("the jsonl workload needs a file (--dataset-path)")
        return jsonl_requests(spec.jsonl_path, tokenizer, spec.num_prompts)
    raise ValueError(f"unknown workload {spec.name!r}; expected one of {', '.join(WORKLOADS)}")


# --- random ---------------------------------------------------------------------------------


def sample_lengths(
    rng: np.random.Generator, n: int, mean: int, range_ratio: float
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Integer lengths uniform in [mean*(1-r), mean*(1+r)], at least 1."""
    low = max(1, int(np.floor(mean * (1 - range_ratio))))
    high = max(low, int(np.ceil(mean * (1 + range_ratio))))
    return rng.integers(low, high + 1, size=n)


def _text_of_length(
    tokenizer: Tokenizer, ids: list[int], target: int, allowed: np.ndarray[Any, Any], rng: Any
) -> tuple[str, int]:
    """Text that re-encodes to ``target`` tokens (or as close as a few tries get)."""
    ids = list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for _ in range(10):
        again = tokenizer.encode(text, add_special_tokens=False)
        if len(again) == target:
            return text, target
        if len(again) > target:
            ids = again[:target]
        else:
            extra = allowed[rng.integers(0, len(allowed), size=target - len(again))]
            ids = again + [int(t) for t in extra]
        text = tokenizer.decode(ids, skip_special_tokens=False)
    return text, len(tokenizer.encode(text, add_special_tokens=False))


def random_requests(
    spec: WorkloadSpec, tokenizer: Tokenizer, rng: np.random.Generator
) -> list[BenchRequest]:
    special = int(tokenizer.num_special_tokens_to_add())
    real_len = max(1, spec.input_len - special)
    input_lens = sample_lengths(rng, spec.num_prompts, real_len, spec.range_ratio)
    output_lens = sample_lengths(rng, spec.num_prompts, spec.output_len, spec.range_ratio)
    offsets = rng.integers(0, tokenizer.vocab_size, size=spec.num_prompts)
    banned = set(tokenizer.all_special_ids)
    allowed = np.array([t for t in range(tokenizer.vocab_size) if t not in banned])
    prefix: list[int] = []
    if spec.prefix_len > 0:
        raw = allowed[rng.integers(0, len(allowed), size=spec.prefix_len)].tolist()
        prefix_text, _ = _text_of_length(tokenizer, raw, spec.prefix_len, allowed, rng)
        prefix = tokenizer.encode(prefix_text, add_special_tokens=False)[: spec.prefix_len]
    out = []
    for i in range(spec.num_prompts):
        n = int(input_lens[i])
        inner = allowed[(int(offsets[i]) + i + np.arange(n)) % len(allowed)].tolist()
        target = len(prefix) + n
        text, got = _text_of_length(tokenizer, prefix + inner, target, allowed, rng)
        body = {"prompt": text, "max_tokens": int(output_lens[i])}
        out.append(BenchRequest(COMPLETIONS, body, got + special, int(output_lens[i])))
    return out


# --- repository sources (chat, fim, editor) ---------------------------------------------------


def repo_files(repo_dir: Path | None) -> list[tuple[str, str]]:
    """``(relative path, text)`` of the repository's Python files, in a stable order."""
    root = repo_dir or Path(__file__).resolve().parents[1]
    files = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > 200:
            files.append((path.relative_to(root.parent).as_posix(), text))
    if not files:
        raise ValueError(f"no source files (*.py over 200 bytes) under {root}")
    return files


def _tail_tokens(tokenizer: Tokenizer, text: str, n: int) -> str:
    """The end of ``text`` holding at most about ``n`` tokens."""
    if n <= 0:
        return ""
    ids = tokenizer.encode(text[-n * 8 :], add_special_tokens=False)
    return text if len(ids) <= n and len(text) <= n * 8 else tokenizer.decode(ids[-n:])


def _head_tokens(tokenizer: Tokenizer, text: str, n: int) -> str:
    if n <= 0:
        return ""
    ids = tokenizer.encode(text[: n * 8], add_special_tokens=False)
    return tokenizer.decode(ids[:n])


def fim_prompt(
    tokenizer: Tokenizer,
    files: list[tuple[str, str]],
    target: int,
    cursor: int,
    budget: int,
    suffix_budget: int,
) -> tuple[str, str]:
    """``(prefix, suffix)``: other files under ``#path`` headers, then the target file's header and
    its text up to the cursor; about ``budget`` tokens of prefix in all (the target's text nearest
    the cursor first, then as much of the other files as fits)."""
    path, text = files[target]
    header = f"#{path}\n"
    room = budget - len(tokenizer.encode(header, add_special_tokens=False))
    own = _tail_tokens(tokenizer, text[:cursor], room)
    room -= len(tokenizer.encode(own, add_special_tokens=False))
    context_parts = [f"#{p}\n{t}\n" for i, (p, t) in enumerate(files) if i != target]
    context = _tail_tokens(tokenizer, "".join(context_parts), room)
    suffix = _head_tokens(tokenizer, text[cursor:], suffix_budget)
    return context + header + own, suffix


def _fim_body(prefix: str, suffix: str, max_tokens: int, use_suffix: bool) -> dict[str, Any]:
    if use_suffix:
        return {"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "temperature": 0.0}
    prompt = f"{FIM_BEGIN}{prefix}{FIM_HOLE}{suffix}{FIM_END}"
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}


def _count(tokenizer: Tokenizer, prefix: str, suffix: str) -> int:
    # BOS + FIM markers + text
    return 4 + len(tokenizer.encode(prefix + suffix, add_special_tokens=False))


def fim_requests(
    spec: WorkloadSpec, tokenizer: Tokenizer, rng: np.random.Generator
) -> list[BenchRequest]:
    files = repo_files(spec.repo_dir)
    input_lens = sample_lengths(rng, spec.num_prompts, spec.input_len, spec.range_ratio)
    output_lens = sample_lengths(rng, spec.num_prompts, spec.output_len, spec.range_ratio)
    out = []
    for i in range(spec.num_prompts):
        target = int(rng.integers(0, len(files)))
        cursor = int(rng.integers(0, len(files[target][1])))
        total = int(input_lens[i])
        suffix_budget = total // 4
        prefix, suffix = fim_prompt(
            tokenizer, files, target, cursor, total - suffix_budget - 4, suffix_budget
        )
        body = _fim_body(prefix, suffix, int(output_lens[i]), spec.fim_suffix)
        count = _count(tokenizer, prefix, suffix)
        out.append(BenchRequest(COMPLETIONS, body, count, int(output_lens[i])))
    return out


def editor_requests(
    spec: WorkloadSpec, tokenizer: Tokenizer, rng: np.random.Generator
) -> list[BenchRequest]:
    """Sessions typing through a file: each keystroke moves the cursor one character on and sends a
    FIM completion of the same file; gaps are Gamma distributed with an occasional pause."""
    files = repo_files(spec.repo_dir)
    sessions = max(1, spec.sessions)
    per_session = [spec.num_prompts // sessions] * sessions
    for s in range(spec.num_prompts % sessions):
        per_session[s] += 1
    out = []
    for s, count in enumerate(per_session):
        target = int(rng.integers(0, len(files)))
        text = files[target][1]
        cursor = int(rng.integers(0, max(1, len(text) - count)))
        at = 0.0
        for _ in range(count):
            prefix, suffix = fim_prompt(
                tokenizer, files, target, cursor, spec.input_len * 3 // 4, spec.input_len // 4
            )
            body = _fim_body(prefix, suffix, spec.output_len, spec.fim_suffix)
            n = _count(tokenizer, prefix, suffix)
            out.append(BenchRequest(COMPLETIONS, body, n, spec.output_len, session=s, at=at))
            cursor = min(len(text), cursor + 1)
            mean = spec.keystroke_ms / 1000
            at += float(rng.gamma(shape=2.0, scale=mean / 2)) if mean > 0 else 0.0
            if spec.pause_every > 0 and rng.random() < 1 / spec.pause_every:
                at += float(rng.exponential(spec.pause_ms / 1000))
    return out


# --- chat ---------------------------------------------------------------------------------------

_ASKS = (
    "Explain what this code does and point out any bug:",
    "Refactor this code for readability; keep its behaviour:",
    "Write unit tests for this code:",
    "Add type hints and docstrings to this code:",
)


def chat_requests(
    spec: WorkloadSpec, tokenizer: Tokenizer, rng: np.random.Generator
) -> list[BenchRequest]:
    """Conversations about snippets of the repository: earlier turns, then a question whose code
    fills the remaining input budget."""
    files = repo_files(spec.repo_dir)
    input_lens = sample_lengths(rng, spec.num_prompts, spec.input_len, spec.range_ratio)
    output_lens = sample_lengths(rng, spec.num_prompts, spec.output_len, spec.range_ratio)
    out = []
    for i in range(spec.num_prompts):
        budget = int(input_lens[i])
        turns = max(1, spec.chat_turns)
        messages: list[dict[str, str]] = []
        for t in range(turns):
            path, text = files[int(rng.integers(0, len(files)))]
            start = int(rng.integers(0, max(1, len(text) - 1)))
            share = budget // turns - 16
            snippet = _head_tokens(tokenizer, text[start:], max(8, share))
            ask = _ASKS[int(rng.integers(0, len(_ASKS)))]
            messages.append({"role": "user", "content": f"{ask} `{path}`\n```python\n{snippet}```"})
            if t < turns - 1:
                reply = _head_tokens(tokenizer, text[: start + 1][::-1], 16)[::-1]
                messages.append({"role": "assistant", "content": f"Sure.\n{reply}"})
        count = sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages)
        body = {"messages": messages, "max_tokens": int(output_lens[i])}
        out.append(BenchRequest(CHAT, body, count, int(output_lens[i])))
    return out


# --- jsonl ----------------------------------------------------------------------------------------


def jsonl_requests(path: Path, tokenizer: Tokenizer, limit: int | None) -> list[BenchRequest]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            endpoint = body.pop("endpoint", None) or (CHAT if "messages" in body else COMPLETIONS)
            for key in ("stream", "stream_options", "model"):
                body.pop(key, None)
            if endpoint == CHAT:
                text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
            else:
                prompt = body.get("prompt", "")
                text = prompt if isinstance(prompt, str) else ""
            n = len(tokenizer.encode(text, add_special_tokens=False))
            out_len = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
            out.append(BenchRequest(endpoint, body, n, out_len))
            if limit and len(out) >= limit:
                break
    return out
