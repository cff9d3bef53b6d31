"""Model variant detection and special tokens, with the real DeepSeek tokenizers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from deepseek_serve.demo import packaged_tokenizer_dir
from deepseek_serve.prompts.tokenizer import load_hf_tokenizer
from deepseek_serve.prompts.variant import (
    Family,
    Kind,
    UnsupportedModelError,
    detect_variant,
    kind_from_name,
    special_tokens_from,
)

V1_CONFIG = {"model_type": "llama", "bos_token_id": 32013, "vocab_size": 32256}
V2_CONFIG = {"model_type": "deepseek_v2", "bos_token_id": 100000, "vocab_size": 102400}
EOS_DICT = {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": False}


@pytest.fixture(scope="module")
def v1() -> tuple[PreTrainedTokenizerBase, dict[str, Any]]:
    path = packaged_tokenizer_dir("deepseek-coder")
    return load_hf_tokenizer(path), json.loads((path / "tokenizer_config.json").read_text())


@pytest.fixture(scope="module")
def v2() -> tuple[PreTrainedTokenizerBase, dict[str, Any]]:
    path = packaged_tokenizer_dir("deepseek-coder-v2")
    return load_hf_tokenizer(path), json.loads((path / "tokenizer_config.json").read_text())


def _tiny_tokenizer(*, unk: bool) -> PreTrainedTokenizerBase:
    vocab = {"a": 0, "b": 1, "ab": 2, "<unk>": 3, "<s>": 4}
    bpe = models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>" if unk else None)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>" if unk else None, bos_token="<s>"
    )


def test_v1_instruct(v1: tuple[PreTrainedTokenizerBase, dict[str, Any]]) -> None:
    variant = detect_variant(V1_CONFIG, v1[1], v1[0])
    assert (variant.family, variant.kind) == (Family.CODER_V1, Kind.INSTRUCT)
    s = variant.special
    assert (s.bos, s.eos, s.eot) == (32013, 32014, 32021)
    assert (s.fim_begin, s.fim_hole, s.fim_end) == (32016, 32015, 32017)
    assert (s.bos_text, s.eos_text, s.eot_text) == (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<|EOT|>",
    )
    assert (s.fim_begin_text, s.fim_hole_text, s.fim_end_text) == (
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
    )
    assert variant.chat_stop_ids == (32021,)
    assert variant.completion_stop_ids == (32014,)
    # a plain completion may be a chat turn the client rendered itself: it ends at either
    assert variant.text_stop_ids == (32014, 32021)
    assert variant.supports_chat
    assert variant.describe() == (
        "deepseek-coder instruct: chat stops at <|EOT|> (32021); "
        "completion stops at <｜end▁of▁sentence｜> (32014), <|EOT|> (32021); "
        "FIM stops at <｜end▁of▁sentence｜> (32014)"
    )


def test_v1_family_from_architectures_only(
    v1: tuple[PreTrainedTokenizerBase, dict[str, Any]],
) -> None:
    variant = detect_variant({"architectures": ["LlamaForCausalLM"]}, v1[1], v1[0])
    assert variant.family is Family.CODER_V1


@pytest.mark.parametrize("eos", ["<｜end▁of▁sentence｜>", EOS_DICT])
def test_v1_base_from_tokenizer_config(
    v1: tuple[PreTrainedTokenizerBase, dict[str, Any]], eos: object
) -> None:
    config = {k: v for k, v in v1[1].items() if k != "chat_template"} | {"eos_token": eos}
    variant = detect_variant(V1_CONFIG, config, v1[0])
    assert variant.kind is Kind.BASE
    assert not variant.supports_chat
    assert variant.chat_stop_ids == (32014,)
    assert variant.completion_stop_ids == (32014,) == variant.text_stop_ids
    assert variant.describe() == (
        "deepseek-coder base: no chat (base model); "
        "completion/FIM stop at <｜end▁of▁sentence｜> (32014)"
    )


def test_v1_instruct_from_eot_eos_alone(v1: tuple[PreTrainedTokenizerBase, dict[str, Any]]) -> None:
    config = {"eos_token": {"content": "<|EOT|>"}}
    assert detect_variant(V1_CONFIG, config, v1[0]).kind is Kind.INSTRUCT
    assert detect_variant(V1_CONFIG, {}, v1[0]).kind is Kind.BASE


def test_v2_kind_from_name_hint(v2: tuple[PreTrainedTokenizerBase, dict[str, Any]]) -> None:
    hf, config = v2
    # V2 base ships the same tokenizer_config (chat template included): the name decides.
    base = detect_variant(
        V2_CONFIG, config, hf, name_hint="deepseek-ai/DeepSeek-Coder-V2-Lite-Base"
    )
    assert (base.family, base.kind) == (Family.CODER_V2, Kind.BASE)
    instruct = detect_variant(V2_CONFIG, config, hf, name_hint="DeepSeek-Coder-V2-Lite-Instruct")
    assert instruct.kind is Kind.INSTRUCT
    assert detect_variant(V2_CONFIG, config, hf).kind is Kind.INSTRUCT
    s = instruct.special
    assert (s.bos, s.eos, s.eot, s.eot_text) == (100000, 100001, None, None)
    assert (s.fim_hole, s.fim_begin, s.fim_end) == (100002, 100003, 100004)
    assert instruct.chat_stop_ids == (100001,) == instruct.completion_stop_ids
    assert instruct.text_stop_ids == (100001,)
    assert instruct.describe() == (
        "deepseek-coder-v2 instruct: chat stops at <｜end▁of▁sentence｜> (100001); "
        "completion/FIM stop at <｜end▁of▁sentence｜> (100001)"
    )


def test_v2_from_architectures(v2: tuple[PreTrainedTokenizerBase, dict[str, Any]]) -> None:
    variant = detect_variant({"architectures": ["DeepseekV2ForCausalLM"]}, v2[1], v2[0])
    assert variant.family is Family.CODER_V2


def test_override_wins(v1: tuple[PreTrainedTokenizerBase, dict[str, Any]]) -> None:
    hint = "deepseek-coder-6.7b-instruct"
    variant = detect_variant(V1_CONFIG, v1[1], v1[0], name_hint=hint, kind_override=Kind.BASE)
    assert variant.kind is Kind.BASE
    hinted = detect_variant(V1_CONFIG, v1[1], v1[0], name_hint="deepseek-coder-6.7b-base")
    assert hinted.kind is Kind.BASE


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("deepseek-ai/deepseek-coder-6.7b-instruct", Kind.INSTRUCT),
        ("DeepSeek-Coder-V2-Lite-Instruct", Kind.INSTRUCT),
        ("deepseek-coder-1.3b-BASE", Kind.BASE),
        ("deepseek-coder-6.7b-instruct-awq", Kind.INSTRUCT),
        ("my-baseline-model", None),
        ("/data/my-base-models/deepseek-coder-6.7b-instruct", Kind.INSTRUCT),
        ("models--deepseek-ai--deepseek-coder-1.3b-base/snapshots/0123abcd", Kind.BASE),
        ("deepseek-coder", None),
        ("", None),
    ],
)
def test_kind_from_name(name: str, kind: Kind | None) -> None:
    assert kind_from_name(name) is kind


@pytest.mark.parametrize("unk", [True, False])
def test_non_deepseek_tokenizer_is_rejected(unk: bool) -> None:
    with pytest.raises(UnsupportedModelError, match="fim"):
        special_tokens_from(_tiny_tokenizer(unk=unk))
    with pytest.raises(UnsupportedModelError, match="DeepSeek-Coder"):
        detect_variant({"model_type": "llama"}, {}, _tiny_tokenizer(unk=unk))


def test_unknown_architecture_is_rejected(
    v1: tuple[PreTrainedTokenizerBase, dict[str, Any]],
) -> None:
    with pytest.raises(UnsupportedModelError, match="qwen2"):
        detect_variant({"model_type": "qwen2"}, v1[1], v1[0])
    with pytest.raises(UnsupportedModelError):
        detect_variant({}, v1[1], v1[0])


def test_mismatched_tokenizer_is_rejected(
    v1: tuple[PreTrainedTokenizerBase, dict[str, Any]],
    v2: tuple[PreTrainedTokenizerBase, dict[str, Any]],
) -> None:
    with pytest.raises(UnsupportedModelError, match="Coder v1 tokenizer"):
        detect_variant(V2_CONFIG, v1[1], v1[0])
    with pytest.raises(UnsupportedModelError, match="bos_token_id"):
        detect_variant({"model_type": "llama", "bos_token_id": 1}, v1[1], v1[0])
    # A V2 tokenizer under a v1 config: no <|EOT|> for chat, ids beyond the vocabulary.
    with pytest.raises(UnsupportedModelError, match="EOT"):
        detect_variant({"model_type": "llama"}, v2[1], v2[0])
    with pytest.raises(UnsupportedModelError, match="vocabulary"):
        detect_variant(
            {"model_type": "llama", "vocab_size": 32256}, v2[1], v2[0], kind_override=Kind.BASE
        )
