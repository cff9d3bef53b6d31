"""Which DeepSeek-Coder model is being served, and the special tokens that drive it.

Everything that depends on the model generation (Coder v1 vs V2) or on base vs instruct is decided
here once, at start-up, so the templates and routes never branch on model names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from transformers import PreTrainedTokenizerBase

BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"
EOT_TEXT = "<|EOT|>"
FIM_BEGIN_TEXT = "<｜fim▁begin｜>"
FIM_HOLE_TEXT = "<｜fim▁hole｜>"
FIM_END_TEXT = "<｜fim▁end｜>"

_V1_MODEL_TYPES = frozenset({"llama"})
_V1_ARCHITECTURES = frozenset({"LlamaForCausalLM"})
_V2_MODEL_TYPES = frozenset({"deepseek_v2"})
_V2_ARCHITECTURES = frozenset({"DeepseekV2ForCausalLM"})

# "-base" must not match "-baseline" and friends, hence the look-ahead.
_KIND_HINT = re.compile(r"-(instruct|base)(?![a-z])", re.IGNORECASE)


class Family(str, Enum):
    """Model generation; decides the chat format and the vocabulary."""

    CODER_V1 = "deepseek-coder"
    CODER_V2 = "deepseek-coder-v2"


class Kind(str, Enum):
    """Base (completion/FIM only) or instruct (chat as well)."""

    BASE = "base"
    INSTRUCT = "instruct"


class UnsupportedModelError(Exception):
    """The checkpoint or tokenizer is not a DeepSeek-Coder model this server can drive."""


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    """Ids and texts of the control tokens, as the loaded tokenizer defines them."""

    bos: int
    bos_text: str
    eos: int
    eos_text: str
    eot: int | None
    eot_text: str | None
    fim_begin: int
    fim_hole: int
    fim_end: int
    fim_begin_text: str
    fim_hole_text: str
    fim_end_text: str

    def by_text(self) -> tuple[tuple[str, int], ...]:
        """(text, id) of every special token the vocabulary has."""
        pairs = [
            (self.bos_text, self.bos),
            (self.eos_text, self.eos),
            (self.fim_begin_text, self.fim_begin),
            (self.fim_hole_text, self.fim_hole),
            (self.fim_end_text, self.fim_end),
        ]
        if self.eot is not None and self.eot_text is not None:
            pairs.append((self.eot_text, self.eot))
        return tuple(pairs)

    def text_of(self, token_id: int) -> str:
        """Text of one of these special ids (used for log lines)."""
        return next(text for text, i in self.by_text() if i == token_id)


@dataclass(frozen=True, slots=True)
class Variant:
    """The served model: family, kind and its special tokens."""

    family: Family
    kind: Kind
    special: SpecialTokens

    @property
    def chat_stop_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn in chat."""
        # v1 instruct closes each turn with <|EOT|> (its tokenizer's eos), not end-of-sentence.
        if self.family is Family.CODER_V1 and self.kind is Kind.INSTRUCT:
            assert self.special.eot is not None  # enforced by detect_variant
            return (self.special.eot,)
        return (self.special.eos,)

    @property
    def completion_stop_ids(self) -> tuple[int, ...]:
        """Ids that end raw completion and FIM output."""
        # DeepSeek's README: code completion with an instruct model stops at end-of-sentence,
        # <|EOT|> only makes sense after a chat turn.
        return (self.special.eos,)

    @property
    def text_stop_ids(self) -> tuple[int, ...]:
        """Ids that end a plain (not fill-in-the-middle) completion: end-of-sentence, and on an
        instruct checkpoint also the end of a turn. Clients such as Continue's vLLM provider
        render the chat template themselves and send it as a completion prompt; the
        checkpoint's generation_config ends turns at <|EOT|> and vLLM stops there."""
        if self.kind is Kind.INSTRUCT and self.special.eot is not None:
            return (self.special.eos, self.special.eot)
        return self.completion_stop_ids

    @property
    def supports_chat(self) -> bool:
        """Whether chat requests can be served (instruct models only)."""
        return self.kind is Kind.INSTRUCT

    def describe(self) -> str:
        """One start-up log line naming the stop tokens and their ids."""
        fim = _format_ids(self.completion_stop_ids, self.special)
        text = _format_ids(self.text_stop_ids, self.special)
        chat = (
            f"chat stops at {_format_ids(self.chat_stop_ids, self.special)}"
            if self.supports_chat
            else "no chat (base model)"
        )
        stops = (
            f"completion/FIM stop at {fim}"
            if text == fim
            else f"completion stops at {text}; FIM stops at {fim}"
        )
        return f"{self.family.value} {self.kind.value}: {chat}; {stops}"


def _format_ids(ids: tuple[int, ...], special: SpecialTokens) -> str:
    return ", ".join(f"{special.text_of(i)} ({i})" for i in ids)


def _single_id(tokenizer: PreTrainedTokenizerBase, text: str) -> int | None:
    """Id of ``text`` as one vocabulary entry, or None when the vocabulary lacks it."""
    found = tokenizer.convert_tokens_to_ids(text)
    if not isinstance(found, int) or found < 0:
        return None
    # Unknown strings map to unk (or None when there is no unk token): not a real entry.
    if tokenizer.unk_token_id is not None and found == tokenizer.unk_token_id:
        return None
    return found


def special_tokens_from(tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
    """Look up the DeepSeek-Coder control tokens in ``tokenizer`` by their text.

    Raises UnsupportedModelError when a required token is missing, which is what a
    non-DeepSeek tokenizer looks like.
    """
    required = (BOS_TEXT, EOS_TEXT, FIM_BEGIN_TEXT, FIM_HOLE_TEXT, FIM_END_TEXT)
    ids = {text: _single_id(tokenizer, text) for text in required}
    missing = [text for text, token_id in ids.items() if token_id is None]
    if missing:
        raise UnsupportedModelError(
            "the tokenizer lacks DeepSeek-Coder special tokens "
            f"{', '.join(missing)}; only DeepSeek-Coder v1 and V2 checkpoints are supported"
        )
    eot = _single_id(tokenizer, EOT_TEXT)

    def get(text: str) -> int:
        token_id = ids[text]
        assert token_id is not None  # checked above
        return token_id

    return SpecialTokens(
        bos=get(BOS_TEXT),
        bos_text=BOS_TEXT,
        eos=get(EOS_TEXT),
        eos_text=EOS_TEXT,
        eot=eot,
        eot_text=EOT_TEXT if eot is not None else None,
        fim_begin=get(FIM_BEGIN_TEXT),
        fim_hole=get(FIM_HOLE_TEXT),
        fim_end=get(FIM_END_TEXT),
        fim_begin_text=FIM_BEGIN_TEXT,
        fim_hole_text=FIM_HOLE_TEXT,
        fim_end_text=FIM_END_TEXT,
    )


def family_from_config(model_config: Mapping[str, Any]) -> Family:
    """Model generation from config.json ``model_type`` and ``architectures``."""
    model_type = model_config.get("model_type")
    raw_architectures = model_config.get("architectures") or ()
    architectures = {a for a in raw_architectures if isinstance(a, str)}
    is_v1 = model_type in _V1_MODEL_TYPES or bool(architectures & _V1_ARCHITECTURES)
    is_v2 = model_type in _V2_MODEL_TYPES or bool(architectures & _V2_ARCHITECTURES)
    if is_v1 != is_v2:
        return Family.CODER_V1 if is_v1 else Family.CODER_V2
    raise UnsupportedModelError(
        f"config.json model_type={model_type!r}, architectures={sorted(architectures)}: "
        "expected DeepSeek-Coder v1 (llama / LlamaForCausalLM) "
        "or V2 (deepseek_v2 / DeepseekV2ForCausalLM)"
    )


def kind_from_name(name_hint: str) -> Kind | None:
    """Kind named by a hub id or path ("-instruct" / "-base"), or None when it names neither.

    The last mention wins: in "/data/my-base-models/deepseek-coder-6.7b-instruct" the model's
    own name comes last.
    """
    found = _KIND_HINT.findall(name_hint)
    return Kind(found[-1].lower()) if found else None


def _token_content(token: object) -> str | None:
    # tokenizer_config.json stores special tokens either as strings or AddedToken dicts.
    if isinstance(token, str):
        return token
    if isinstance(token, Mapping):
        content = token.get("content")
        return content if isinstance(content, str) else None
    return None


def kind_from_tokenizer_config(tokenizer_config: Mapping[str, Any]) -> Kind:
    """Instruct when the tokenizer ends turns with <|EOT|> or ships a chat template."""
    if _token_content(tokenizer_config.get("eos_token")) == EOT_TEXT:
        return Kind.INSTRUCT
    if tokenizer_config.get("chat_template"):
        return Kind.INSTRUCT
    return Kind.BASE


def _check_consistency(
    family: Family, kind: Kind, special: SpecialTokens, model_config: Mapping[str, Any]
) -> None:
    """Catch a tokenizer that belongs to a different model than config.json."""
    if family is Family.CODER_V2 and special.eot is not None:
        raise UnsupportedModelError(
            f"config.json is DeepSeek-Coder-V2 but the tokenizer has {EOT_TEXT} "
            "(a Coder v1 tokenizer?); supply the checkpoint's own tokenizer files"
        )
    if family is Family.CODER_V1 and kind is Kind.INSTRUCT and special.eot is None:
        raise UnsupportedModelError(
            f"DeepSeek-Coder v1 instruct needs {EOT_TEXT} to end chat turns, but the tokenizer "
            "lacks it; pass kind=base to serve completion/FIM only"
        )
    config_bos = model_config.get("bos_token_id")
    if isinstance(config_bos, int) and config_bos != special.bos:
        raise UnsupportedModelError(
            f"config.json bos_token_id={config_bos} but the tokenizer's {BOS_TEXT} is "
            f"{special.bos}: tokenizer and weights do not belong together"
        )
    vocab_size = model_config.get("vocab_size")
    largest = max(i for _, i in special.by_text())
    if isinstance(vocab_size, int) and largest >= vocab_size:
        raise UnsupportedModelError(
            f"tokenizer special id {largest} is outside the model vocabulary ({vocab_size})"
        )


def detect_variant(
    model_config: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    name_hint: str = "",
    kind_override: Kind | None = None,
) -> Variant:
    """Decide family and kind of the served model.

    Family comes from config.json and is cross-checked with the tokenizer. Kind precedence:
    ``kind_override`` > ``name_hint`` ("-instruct" / "-base") > tokenizer_config > base.
    Raises UnsupportedModelError for anything that is not a consistent DeepSeek-Coder model.
    """
    family = family_from_config(model_config)
    special = special_tokens_from(tokenizer)
    kind = kind_override if kind_override is not None else kind_from_name(name_hint)
    if kind is None:
        kind = kind_from_tokenizer_config(tokenizer_config)
    _check_consistency(family, kind, special, model_config)
    return Variant(family=family, kind=kind, special=special)
