"""Prompt tokenization, and the start-up check that the engine's tokenizer is the real one.

transformers 5 (and so vLLM) loads DeepSeek-Coder's original hub tokenizer files
(LlamaTokenizerFast) as a Llama tokenizer that drops whitespace and adds no BOS. prepare_tokenizer
checks the tokenizer against golden ids and, if needed, writes a repaired copy for the engine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from deepseek_serve.demo import packaged_tokenizer_dir
from deepseek_serve.prompts.line_cache import LineCache
from deepseek_serve.prompts.variant import (
    Family,
    Kind,
    SpecialTokens,
    UnsupportedModelError,
    Variant,
    detect_variant,
)

GOLDEN_SEPARATOR = "\n__ggml_vocab_test__\n"
# Bump when the repair changes, so stale repaired copies are not reused.
_REPAIR_VERSION = b"deepseek-serve-tokenizer-repair-1"
_EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_BOS_PROBES = ("Hello world", "def main():\n    return 0\n")
_ROUND_TRIPS = (
    "def add(a, b):\n    return a + b\n",
    "\tif (x != y) { return -1; }\r\n",
    "  xs = [1, 2, 3]  # spaces , before comma\n\n\n",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); }',
)


class TokenizerFidelityError(Exception):
    """The tokenizer does not reproduce DeepSeek-Coder's token ids and cannot be repaired."""


@dataclass(frozen=True, slots=True)
class GoldenCase:
    """An input text and the ids the original tokenizer gives it (no special tokens)."""

    text: str
    ids: tuple[int, ...]


def parse_golden(inp: str, out: str) -> tuple[GoldenCase, ...]:
    """Parse llama.cpp-style vocab test files: every input is followed by the separator line."""
    # Inputs can be empty or whitespace only, so split on the exact separator, never on lines.
    if not inp.endswith(GOLDEN_SEPARATOR):
        raise ValueError("golden input does not end with the separator line")
    texts = inp[: -len(GOLDEN_SEPARATOR)].split(GOLDEN_SEPARATOR)
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(texts):
        raise ValueError(f"golden files disagree: {len(texts)} inputs, {len(lines)} id lines")
    return tuple(
        GoldenCase(text, tuple(int(i) for i in line.split()))
        for text, line in zip(texts, lines, strict=True)
    )


@cache
def golden_cases(family: Family) -> tuple[GoldenCase, ...]:
    """Golden cases for ``family``'s tokenizer, from the package data."""
    # llama.cpp keeps no Coder-V2 goldens; its DeepSeek-LLM ones fit V2 on all ASCII texts.
    stem = "deepseek-coder" if family is Family.CODER_V1 else "deepseek-llm"
    base = packaged_tokenizer_dir("golden") / stem
    # Decode bytes ourselves: text-mode reading would translate "\r" inside inputs.
    inp = base.with_suffix(".inp").read_bytes().decode("utf-8")
    out = base.with_suffix(".out").read_bytes().decode("utf-8")
    return parse_golden(inp, out)


def load_hf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory with the arguments vLLM's HF tokenizer loader uses."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(path),
        trust_remote_code=False,
        revision=None,
        truncation_side="left",
        mistral_format=False,
    )
    return tokenizer


@dataclass(frozen=True, slots=True)
class EncodePlan:
    """A text's lines, the distinct ones not cached, and their length in characters."""

    lines: list[str]
    missing: list[str]
    missing_chars: int


class PromptTokenizer:
    """The tokenizer the server uses for prompts; same files as the engine loads."""

    __slots__ = ("_backend", "_lines", "hf", "variant")

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase, variant: Variant) -> None:
        self.hf = hf_tokenizer
        self.variant = variant
        # The Rust tokenizer under a fast HF tokenizer. Its batch call without offsets gives the
        # same ids about 20% sooner than ``hf.encode``, and releases the GIL while it works, so a
        # long prompt tokenized in a worker thread does not hold up the event loop's streams.
        self._backend: Any = getattr(hf_tokenizer, "backend_tokenizer", None)
        # Ids of lines seen before: an editor resends nearly the same prompt on every keystroke.
        self._lines = (
            None if self._backend is None else LineCache.for_tokenizer(self._backend, self._raw)
        )

    def __len__(self) -> int:
        """Number of ids the tokenizer knows (base vocabulary plus added tokens)."""
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with exactly one leading BOS; special-token texts are parsed."""
        plan = self.plan(text)
        return self.finish(plan, self.work(plan))

    # ``encode`` in three steps, so that only the slow one (tokenizing what was not seen
    # before) needs to leave the event loop: ``work`` may run in a worker thread.
    def plan(self, text: str) -> EncodePlan:
        """What ``text`` needs: its lines, and those not cached (all of it without a cache)."""
        if self._lines is None:
            return EncodePlan([text], [text], len(text))
        lines, missing = self._lines.lines(text)
        return EncodePlan(lines, missing, sum(map(len, missing)))

    def work(self, plan: EncodePlan) -> dict[str, tuple[int, ...]]:
        if self._lines is None:
            return {plan.missing[0]: tuple(self._raw(plan.missing[0]))}
        return self._lines.fill(plan.missing)

    def finish(self, plan: EncodePlan, fresh: dict[str, tuple[int, ...]]) -> list[int]:
        bos = self.variant.special.bos
        if self._lines is None:
            ids = [bos, *fresh[plan.lines[0]]]
        else:
            ids = self._lines.assemble(plan.lines, fresh)
            ids.insert(0, bos)
        # Chat prompts carry the BOS text themselves; never let that become a second BOS.
        end = 1
        while end < len(ids) and ids[end] == bos:
            end += 1
        if end > 1:
            del ids[1:end]
        return ids

    def _raw(self, text: str) -> list[int]:
        """Ids of ``text`` as the tokenizer gives them, uncached, without special tokens added."""
        ids: list[int]
        if self._backend is not None:
            ids = self._backend.encode_batch_fast([text], add_special_tokens=False)[0].ids
        else:
            ids = self.hf.encode(text, add_special_tokens=False)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens included."""
        text = self.hf.decode(list(ids), skip_special_tokens=False)
        assert isinstance(text, str)  # one sequence in, one string out
        return text

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Decoded text of each id on its own (a byte-level piece may decode to U+FFFD)."""
        texts: list[str] = self.hf.batch_decode([[i] for i in ids], skip_special_tokens=False)
        return texts


@dataclass(frozen=True, slots=True)
class TokenizerSetup:
    """Outcome of prepare_tokenizer: what the engine loads and what the server uses."""

    tokenizer_dir: Path
    prompt_tokenizer: PromptTokenizer
    variant: Variant
    repaired: bool
    notes: tuple[str, ...]


def _bos_problems(tokenizer: PreTrainedTokenizerBase, bos: int) -> list[str]:
    problems = []
    for probe in _BOS_PROBES:
        with_special = tokenizer.encode(probe)
        plain = tokenizer.encode(probe, add_special_tokens=False)
        if with_special != [bos, *plain]:
            problems.append(
                f"encoding {probe!r} with special tokens gives {with_special[:8]}, expected "
                f"BOS {bos} once followed by {plain[:8]}"
            )
    return problems


def _golden_problems(tokenizer: PreTrainedTokenizerBase, family: Family) -> list[str]:
    cases = [c for c in golden_cases(family) if c.text.isascii()]
    misses = [
        (case, got)
        for case in cases
        if (got := tuple(tokenizer.encode(case.text, add_special_tokens=False))) != case.ids
    ]
    if not misses:
        return []
    examples = "; ".join(
        f"{case.text[:40]!r} -> {list(got[:8])}, expected {list(case.ids[:8])}"
        for case, got in misses[:3]
    )
    return [f"{len(misses)} of {len(cases)} ASCII golden texts tokenize wrongly, e.g. {examples}"]


def fidelity_problems(tokenizer: PreTrainedTokenizerBase, variant: Variant) -> list[str]:
    """Ways ``tokenizer`` differs from the original DeepSeek-Coder tokenizer; empty when none."""
    special = variant.special
    problems = _bos_problems(tokenizer, special.bos)
    for text, token_id in special.by_text():
        got = tokenizer.encode(text, add_special_tokens=False)
        if got != [token_id]:
            problems.append(f"{text} encodes to {got}, expected the single id {token_id}")
    problems.extend(_golden_problems(tokenizer, variant.family))
    fim = f"{special.fim_begin_text}x = 1\n{special.fim_hole_text}\n{special.fim_end_text}"
    for text in (*_ROUND_TRIPS, fim):
        ids = tokenizer.encode(text, add_special_tokens=False)
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if back != text:
            problems.append(f"decode(encode({text!r})) gives {back!r}")
    return problems


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TokenizerFidelityError(f"{path} is not a JSON object")
    return data


def _tokenizer_config(source: Path) -> dict[str, Any]:
    path = source / "tokenizer_config.json"
    config = _read_json(path) if path.is_file() else {}
    jinja = source / "chat_template.jinja"
    # transformers 5 may keep the chat template in its own file; it still marks an instruct model.
    if "chat_template" not in config and jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    return config


def _load(source: Path) -> PreTrainedTokenizerBase:
    try:
        return load_hf_tokenizer(source)
    except (OSError, ValueError) as exc:
        raise TokenizerFidelityError(
            f"cannot load a tokenizer from {source}: {exc}; supply the checkpoint's "
            "tokenizer.json and tokenizer_config.json"
        ) from exc


def _bos_post_processor(special: SpecialTokens) -> dict[str, Any]:
    def bos(type_id: int) -> dict[str, Any]:
        return {"SpecialToken": {"id": special.bos_text, "type_id": type_id}}

    def seq(name: str, type_id: int) -> dict[str, Any]:
        return {"Sequence": {"id": name, "type_id": type_id}}

    entry = {"id": special.bos_text, "ids": [special.bos], "tokens": [special.bos_text]}
    return {
        "type": "TemplateProcessing",
        "single": [bos(0), seq("A", 0)],
        "pair": [bos(0), seq("A", 0), bos(1), seq("B", 1)],
        "special_tokens": {special.bos_text: entry},
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def write_repaired_tokenizer(
    source: Path, special: SpecialTokens, work_dir: Path, *, model_config: Path | None = None
) -> Path:
    """Write (once) a copy of ``source``'s tokenizer that loads as the original DeepSeek one.

    The copy uses the fast-tokenizer class as-is (no Llama re-interpretation) and a BOS-adding
    post-processor. ``model_config`` (config.json) is copied alongside because vLLM reads the
    tokenizer directory's config and retries noisily without one. The directory name hashes
    the source files, so reruns reuse it.
    """
    tokenizer_json = (source / "tokenizer.json").read_bytes()
    config_path = source / "tokenizer_config.json"
    config_json = config_path.read_bytes() if config_path.is_file() else b"{}"
    model_json = model_config.read_bytes() if model_config is not None else b""
    digest = hashlib.sha256(
        b"\0".join((_REPAIR_VERSION, tokenizer_json, config_json, model_json))
    ).hexdigest()[:16]
    target = work_dir / f"tokenizer-repaired-{digest}"
    if (target / "tokenizer.json").is_file():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=work_dir))
    try:
        tokenizer = json.loads(tokenizer_json)
        tokenizer["post_processor"] = _bos_post_processor(special)
        config = json.loads(config_json)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        _write_json(staging / "tokenizer.json", tokenizer)
        _write_json(staging / "tokenizer_config.json", config)
        if model_config is not None:
            (staging / "config.json").write_bytes(model_json)
        for name in _EXTRA_TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same repair first; its copy is identical.
            if not (target / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def prepare_tokenizer(
    model_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    name_hint: str = "",
    kind_override: Kind | None = None,
    work_dir: Path,
) -> TokenizerSetup:
    """Load, identify and verify the checkpoint's tokenizer, repairing it when needed.

    ``name_hint`` defaults to the model directory's name. Raises UnsupportedModelError for a
    non-DeepSeek-Coder model and TokenizerFidelityError when the tokenizer cannot be made exact.
    """
    source = tokenizer_dir or model_dir
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UnsupportedModelError(f"no config.json in {model_dir}: not a model checkpoint")
    model_config = _read_json(config_path)
    tokenizer_config = _tokenizer_config(source)
    hint = name_hint or model_dir.name

    def identify(path: Path) -> tuple[PreTrainedTokenizerBase, Variant]:
        hf = _load(path)
        variant = detect_variant(
            model_config, tokenizer_config, hf, name_hint=hint, kind_override=kind_override
        )
        return hf, variant

    hf, variant = identify(source)
    notes = [
        f"tokenizer {source} loads as {type(hf).__name__} with {len(hf)} ids",
        f"model: {variant.describe()}",
    ]
    problems = fidelity_problems(hf, variant)
    checked = (
        f"checked: BOS added once, special tokens are single ids, "
        f"{sum(c.text.isascii() for c in golden_cases(variant.family))} ASCII golden texts exact, "
        "decode round-trips exact"
    )
    if not problems:
        notes.append(f"tokenizer OK; {checked}")
        return TokenizerSetup(source, PromptTokenizer(hf, variant), variant, False, tuple(notes))

    notes.extend(f"tokenizer problem: {p}" for p in problems)
    if not (source / "tokenizer.json").is_file():
        raise TokenizerFidelityError(
            f"tokenizer in {source} is wrong and has no tokenizer.json to repair: "
            + "; ".join(problems)
            + ". Supply the original tokenizer.json and tokenizer_config.json"
        )
    repaired_dir = write_repaired_tokenizer(
        source, variant.special, work_dir, model_config=config_path
    )
    hf, variant = identify(repaired_dir)
    remaining = fidelity_problems(hf, variant)
    if remaining:
        raise TokenizerFidelityError(
            f"tokenizer in {source} is wrong and repairing it (fast tokenizer class, BOS "
            f"post-processor, copy in {repaired_dir}) did not help: "
            + "; ".join(remaining)
            + ". Supply the original DeepSeek-Coder tokenizer.json and tokenizer_config.json "
            "(e.g. with a separate tokenizer directory)"
        )
    notes.append(
        f"tokenizer repaired into {repaired_dir} (tokenizer_class PreTrainedTokenizerFast, "
        f"BOS post-processor); the engine loads it from there; {checked}"
    )
    return TokenizerSetup(repaired_dir, PromptTokenizer(hf, variant), variant, True, tuple(notes))
