"""The prompt tokenizer's line cache gives exactly the ids of the uncached tokenizer.

An editor resends nearly the same prompt on every keystroke (clients.md: Continue, Tabby and
llama.vscode send the file around the cursor, and repository context, with each completion), so
the server caches ids per line. Any difference from the tokenizer's own ids would change what
the model sees; these tests compare the two on generated texts and on llama.cpp's golden texts,
with caches warm, cold and evicting.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseek_serve.prompts.line_cache import LineCache, splits_at_newlines
from deepseek_serve.prompts.line_cache import _config as _read_config
from deepseek_serve.prompts.tokenizer import PromptTokenizer, TokenizerSetup, golden_cases

SPECIAL_TEXTS = (
    "<｜begin▁of▁sentence｜>",
    "<｜fim▁begin｜>",
    "<｜fim▁hole｜>",
    "<｜fim▁end｜>",
    "<|EOT|>",
    "<｜end▁of▁sentence｜>",
)
# Pieces code and prose are made of, and the characters the pre-tokenizer treats specially:
# newlines and carriage returns, runs of spaces and tabs, digits (split one by one), letters of
# several scripts, punctuation runs, CJK, emoji (several byte-level tokens), special tokens.
PIECES = st.one_of(
    st.sampled_from(
        ["\n", "\r", "\r\n", "\n\n", " ", "  ", "    ", "\t", "\u3000", "\u00a0", "\x0b", "\x0c"]
    ),
    st.sampled_from(["def", " f", "(x)", ":", " return", " x", "+", "1", "2023", "é", "Führer"]),
    st.sampled_from(["中文", "한국어", "カタカナ", "😀", "🦙", "ℤ", "µ", "ǅ", "\u0301", "\ufffd"]),
    st.sampled_from(["{", "}", "//", "/*", "*/", "!=", "...", "'", '"', "#", "@", "\\", "<", "|"]),
    st.sampled_from(SPECIAL_TEXTS),
    st.text(max_size=6),
)
TEXTS = st.lists(PIECES, max_size=40).map("".join)


def _reference(tok: PromptTokenizer, text: str) -> list[int]:
    """``PromptTokenizer.encode`` as it was without a cache: the Rust tokenizer's ids of the
    whole text, leading BOS collapsed into one."""
    bos = tok.variant.special.bos
    ids = tok.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos, *ids[start:]]


@pytest.fixture(params=["v1", "v2"])
def setup(request: pytest.FixtureRequest) -> TokenizerSetup:
    result: TokenizerSetup = request.getfixturevalue(f"{request.param}_setup")
    return result


def _fresh(setup: TokenizerSetup, generation_tokens: int | None = None) -> PromptTokenizer:
    tok = PromptTokenizer(setup.prompt_tokenizer.hf, setup.variant)
    cache = tok._lines
    assert cache is not None, "DeepSeek's tokenizers split at newlines: the cache must be on"
    if generation_tokens is not None:
        cache.generation_tokens = generation_tokens
    return tok


def test_the_servers_tokenizers_are_cached(setup: TokenizerSetup) -> None:
    tok = setup.prompt_tokenizer
    assert tok._lines is not None
    text = f"def f_{uuid.uuid4().hex}(x):\n    return x\n"  # never seen before
    assert text.split("\n")[0] in tok.plan(text).missing
    tok.encode(text)
    # Seen once: nothing left to tokenize.
    assert tok.plan(text).missing == []


def test_cached_ids_equal_the_tokenizers(setup: TokenizerSetup) -> None:
    tok = _fresh(setup)  # warm across examples: later ones hit lines of earlier ones
    small = _fresh(setup, generation_tokens=16)  # evicts all the time

    @settings(max_examples=150, deadline=None)
    @given(texts=st.lists(TEXTS, min_size=1, max_size=4), edit=st.integers(0, 10**6), typed=TEXTS)
    def check(texts: list[str], edit: int, typed: str) -> None:
        for text in texts:
            # An editor's sequence: a prompt, the prompt with an edit at the cursor, again.
            cursor = edit % (len(text) + 1)
            edited = text[:cursor] + typed + text[cursor:]
            for t in (text, edited, text, edited + "\n" + text):
                want = _reference(tok, t)
                assert tok.encode(t) == want
                assert small.encode(t) == want

    check()


def test_golden_texts_cold_warm_and_joined(setup: TokenizerSetup) -> None:
    tok = _fresh(setup)
    texts = [case.text for case in golden_cases(setup.variant.family)]
    for text in texts + texts:  # the second pass finds every line cached
        assert tok.encode(text) == _reference(tok, text)
    for sep in ("\n", "\r\n", "\n\n", ""):
        joined = sep.join(texts)
        assert tok.encode(joined) == _reference(tok, joined)
    # Ids of a golden text are its golden ids (after the BOS), cached or not.
    for case in golden_cases(setup.variant.family):
        if case.text.isascii():
            assert tok.encode(case.text)[1:] == list(case.ids)


def test_a_long_prompt_from_cache_equals_the_tokenizer(setup: TokenizerSetup) -> None:
    from pathlib import Path

    import deepseek_serve

    tok = _fresh(setup)
    sources = sorted(Path(deepseek_serve.__file__).parent.rglob("*.py"))[:20]
    special = setup.variant.special
    text = "".join(p.read_text() for p in sources)
    for cursor in range(1000, len(text), len(text) // 7):
        fim = (
            f"{special.fim_begin_text}{text[:cursor]}{special.fim_hole_text}"
            f"{text[cursor:]}{special.fim_end_text}"
        )
        assert tok.encode(fim) == _reference(tok, fim)


def _config(setup: TokenizerSetup) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(setup.prompt_tokenizer.hf.backend_tokenizer.to_str())
    # What the cache reads from the loaded tokenizer is what its tokenizer.json says.
    assert _read_config(setup.prompt_tokenizer.hf.backend_tokenizer) == {
        "normalizer": config["normalizer"],
        "pre_tokenizer": config["pre_tokenizer"],
        "model": {"type": config["model"]["type"], "dropout": config["model"]["dropout"]},
        "added_tokens": [
            {k: t[k] for k in ("content", "lstrip", "rstrip", "single_word")}
            for t in config["added_tokens"]
        ],
    }
    return config


def test_tokenizers_that_may_merge_across_newlines_get_no_cache(setup: TokenizerSetup) -> None:
    base = _config(setup)
    assert splits_at_newlines(base) == "\u010a"

    def changed(edit: Any) -> dict[str, Any]:
        config = copy.deepcopy(base)
        edit(config)
        return config

    def drop_newline_split(c: dict[str, Any]) -> None:
        del c["pre_tokenizer"]["pretokenizers"][0]

    def merge_newlines(c: dict[str, Any]) -> None:
        c["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithNext"

    def normalize(c: dict[str, Any]) -> None:
        c["normalizer"] = {"type": "NFC"}

    def strip_special(c: dict[str, Any]) -> None:
        c["added_tokens"][0]["lstrip"] = True

    def newline_token(c: dict[str, Any]) -> None:
        c["added_tokens"].append({**c["added_tokens"][0], "content": "<a>\n<b>"})

    def dropout(c: dict[str, Any]) -> None:
        c["model"]["dropout"] = 0.1

    for edit in (
        drop_newline_split,
        merge_newlines,
        normalize,
        strip_special,
        newline_token,
        dropout,
    ):
        assert splits_at_newlines(changed(edit)) is None, edit.__name__


def test_no_cache_without_a_rust_tokenizer(setup: TokenizerSetup) -> None:
    assert LineCache.for_tokenizer(object(), lambda text: []) is None
