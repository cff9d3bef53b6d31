"""Tokenizer fidelity: golden ids, one BOS, and the repair of the hub-layout trap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from deepseek_serve.demo import packaged_tokenizer_dir
from deepseek_serve.prompts.tokenizer import (
    GOLDEN_SEPARATOR,
    EncodePlan,
    PromptTokenizer,
    TokenizerFidelityError,
    fidelity_problems,
    golden_cases,
    load_hf_tokenizer,
    parse_golden,
    prepare_tokenizer,
)
from deepseek_serve.prompts.variant import (
    Family,
    Kind,
    UnsupportedModelError,
    Variant,
    detect_variant,
)

HUB_LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "deepseek-coder-hub-layout"
V1_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "bos_token_id": 32013}
V2_CONFIG = {"model_type": "deepseek_v2", "bos_token_id": 100000}
BOS_TEXT = "<｜begin▁of▁sentence｜>"


def _load(path: Path, config: dict[str, Any]) -> tuple[PreTrainedTokenizerBase, Variant]:
    hf = load_hf_tokenizer(path)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    return hf, detect_variant(config, tokenizer_config, hf)


@pytest.fixture(scope="module")
def v1() -> tuple[PreTrainedTokenizerBase, Variant]:
    return _load(packaged_tokenizer_dir("deepseek-coder"), V1_CONFIG)


@pytest.fixture(scope="module")
def v2() -> tuple[PreTrainedTokenizerBase, Variant]:
    return _load(packaged_tokenizer_dir("deepseek-coder-v2"), V2_CONFIG)


def _model_dir(root: Path, tokenizer_src: Path, config: dict[str, Any]) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_src / name, model / name)
    return model


def _misses(hf: PreTrainedTokenizerBase, family: Family) -> list[str]:
    return [
        case.text
        for case in golden_cases(family)
        if hf.encode(case.text, add_special_tokens=False) != list(case.ids)
    ]


def test_golden_files_parse_exactly() -> None:
    for family in Family:
        cases = golden_cases(family)
        assert len(cases) == 46
        assert [c.text for c in cases[:8]] == [
            "ied 4 ½ months",
            "Führer",
            "",
            " ",
            "  ",
            "   ",
            "\t",
            "\n",
        ]
        assert cases[2].ids == ()
    assert golden_cases(Family.CODER_V1)[7].ids == (185,)
    assert golden_cases(Family.CODER_V1)[1].ids == (37, 32009, 71, 6247)


def test_parse_golden_keeps_whitespace_and_checks_structure() -> None:
    inp = f"a{GOLDEN_SEPARATOR}{GOLDEN_SEPARATOR} \n {GOLDEN_SEPARATOR}"
    cases = parse_golden(inp, " 1 2\n\n 3 4 5\n")
    assert [(c.text, c.ids) for c in cases] == [("a", (1, 2)), ("", ()), (" \n ", (3, 4, 5))]
    with pytest.raises(ValueError, match="separator"):
        parse_golden("a", "1\n")
    with pytest.raises(ValueError, match="disagree"):
        parse_golden(inp, "1\n")


def test_v1_goldens_all_match(v1: tuple[PreTrainedTokenizerBase, Variant]) -> None:
    assert _misses(v1[0], Family.CODER_V1) == []


def test_v2_goldens_match_except_fuhrer(v2: tuple[PreTrainedTokenizerBase, Variant]) -> None:
    assert _misses(v2[0], Family.CODER_V2) == ["Führer"]


@pytest.mark.parametrize("fixture", ["v1", "v2"])
def test_packaged_tokenizers_have_no_fidelity_problems(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    hf, variant = request.getfixturevalue(fixture)
    assert fidelity_problems(hf, variant) == []


def test_encode_adds_bos_exactly_once(v1: tuple[PreTrainedTokenizerBase, Variant]) -> None:
    tok = PromptTokenizer(*v1)
    assert tok.encode("Hello world") == [32013, 17535, 1835]
    assert tok.encode(BOS_TEXT + "Hello world") == [32013, 17535, 1835]
    assert tok.encode(BOS_TEXT * 3 + "Hello world") == [32013, 17535, 1835]
    assert tok.encode("") == [32013]
    # Only the leading BOS is collapsed; one inside the text is the user's business.
    assert tok.encode("a" + BOS_TEXT).count(32013) == 2
    # Special-token texts are parsed, not spelled out.
    assert tok.encode("<|EOT|>") == [32013, 32021]


def test_encode_decode_v2(v2: tuple[PreTrainedTokenizerBase, Variant]) -> None:
    tok = PromptTokenizer(*v2)
    ids = tok.encode("Hello world")
    assert ids == [100000, 17464, 1843]
    assert tok.decode(ids) == BOS_TEXT + "Hello world"
    assert len(tok) == 100005


def test_decode_and_token_texts(v1: tuple[PreTrainedTokenizerBase, Variant]) -> None:
    tok = PromptTokenizer(*v1)
    code = "def f(x):\n\treturn x  # ok\n"
    assert tok.decode(tok.encode(code)) == BOS_TEXT + code
    assert tok.token_texts([32013, 17535, 1835, 32021]) == [BOS_TEXT, "Hello", " world", "<|EOT|>"]
    assert len(tok) == 32022


def test_prepare_repairs_hub_layout(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, HUB_LAYOUT, V1_CONFIG)
    work = tmp_path / "work"
    setup = prepare_tokenizer(model, work_dir=work)
    assert setup.repaired
    assert setup.tokenizer_dir.parent == work
    assert [p.name for p in work.iterdir()] == [setup.tokenizer_dir.name]  # no staging left
    assert (setup.variant.family, setup.variant.kind) == (Family.CODER_V1, Kind.INSTRUCT)
    assert any("repaired" in n for n in setup.notes)
    assert setup.prompt_tokenizer.encode("Hello world") == [32013, 17535, 1835]

    # What the engine will load from the repaired directory, independently of our objects.
    engine_view = AutoTokenizer.from_pretrained(str(setup.tokenizer_dir))
    assert engine_view.encode("Hello world") == [32013, 17535, 1835]
    assert engine_view.encode(BOS_TEXT + "x") == [32013, 32013, 87]  # why encode() collapses
    assert _misses(engine_view, Family.CODER_V1) == []
    repaired_config = json.loads((setup.tokenizer_dir / "tokenizer_config.json").read_text())
    original_config = json.loads((HUB_LAYOUT / "tokenizer_config.json").read_text())
    assert repaired_config == original_config | {"tokenizer_class": "PreTrainedTokenizerFast"}
    # The checkpoint itself is left alone, and a rerun reuses the same copy.
    assert (model / "tokenizer.json").read_bytes() == (HUB_LAYOUT / "tokenizer.json").read_bytes()
    assert prepare_tokenizer(model, work_dir=work).tokenizer_dir == setup.tokenizer_dir


@pytest.mark.parametrize(
    ("name", "config"), [("deepseek-coder", V1_CONFIG), ("deepseek-coder-v2", V2_CONFIG)]
)
def test_clean_tokenizer_is_used_as_is(tmp_path: Path, name: str, config: dict[str, Any]) -> None:
    packaged = packaged_tokenizer_dir(name)
    model = _model_dir(tmp_path, packaged, config)
    setup = prepare_tokenizer(model, work_dir=tmp_path / "work")
    assert not setup.repaired
    assert setup.tokenizer_dir == model
    assert not (tmp_path / "work").exists()
    separate = prepare_tokenizer(model, tokenizer_dir=packaged, work_dir=tmp_path / "work")
    assert separate.tokenizer_dir == packaged
    assert not separate.repaired
    assert separate.variant == setup.variant


def test_name_hint_and_override_reach_detection(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, packaged_tokenizer_dir("deepseek-coder"), V1_CONFIG)
    hinted = prepare_tokenizer(model, name_hint="deepseek-coder-6.7b-base", work_dir=tmp_path)
    assert hinted.variant.kind is Kind.BASE
    forced = prepare_tokenizer(model, kind_override=Kind.BASE, work_dir=tmp_path)
    assert forced.variant.kind is Kind.BASE


def _damaged_copy(root: Path, tokenizer_class: str) -> Path:
    """Hub-layout files whose vocabulary has "Hello" and " world" swapped."""
    src = root / "damaged-src"
    src.mkdir()
    tokenizer = json.loads((HUB_LAYOUT / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["Hello"], vocab["Ġworld"] = vocab["Ġworld"], vocab["Hello"]
    (src / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = json.loads((HUB_LAYOUT / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = tokenizer_class
    (src / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return src


@pytest.mark.parametrize("tokenizer_class", ["LlamaTokenizerFast", "PreTrainedTokenizerFast"])
def test_unrepairable_tokenizer_raises(tmp_path: Path, tokenizer_class: str) -> None:
    model = _model_dir(tmp_path, _damaged_copy(tmp_path, tokenizer_class), V1_CONFIG)
    with pytest.raises(TokenizerFidelityError, match="golden") as raised:
        prepare_tokenizer(model, work_dir=tmp_path / "work")
    assert "tokenizer.json and tokenizer_config.json" in str(raised.value)


def test_missing_config_or_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"config\.json"):
        prepare_tokenizer(tmp_path, work_dir=tmp_path / "work")
    (tmp_path / "config.json").write_text(json.dumps(V1_CONFIG))
    with pytest.raises(TokenizerFidelityError, match="cannot load"):
        prepare_tokenizer(tmp_path, work_dir=tmp_path / "work")


@pytest.mark.parametrize("fixture", ["v1", "v2"])
def test_fast_path_gives_hf_encode_ids(fixture: str, request: pytest.FixtureRequest) -> None:
    """PromptTokenizer calls the Rust tokenizer directly; it must agree with transformers'
    ``encode`` on every golden text and on real code with special tokens inside."""
    hf, variant = request.getfixturevalue(fixture)
    tok = PromptTokenizer(hf, variant)
    bos = variant.special.bos
    source = Path(__file__).read_text()
    texts = [case.text for case in golden_cases(variant.family)]
    fim = "<｜fim▁begin｜>def f():\n<｜fim▁hole｜>\n<｜fim▁end｜>"
    texts += [source, fim, "  \n\t x\u00e9\u4e2d"]
    for text in texts:
        expected = hf.encode(text, add_special_tokens=False)
        while expected and expected[0] == bos:
            expected = expected[1:]
        assert tok.encode(text) == [bos, *expected], text[:60]


def test_long_prompts_are_tokenized_off_the_event_loop(
    v1: tuple[PreTrainedTokenizerBase, Variant],
) -> None:
    import asyncio
    import threading

    from deepseek_serve.engine import ModelLimits
    from deepseek_serve.prompts.validation import OFF_LOOP_CHARS, Validator
    from deepseek_serve.settings import Settings

    threads: list[str] = []

    class Spy(PromptTokenizer):
        __slots__ = ()

        def work(self, plan: EncodePlan) -> dict[str, tuple[int, ...]]:
            threads.append(threading.current_thread().name)
            return super().work(plan)

    builder = Validator.build(Settings(), Spy(*v1), ModelLimits(4096, 32256))
    encode = PromptTokenizer(*v1).encode
    short = "def f(x):\n    return x\n"
    long = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(OFF_LOOP_CHARS // 16))
    assert len(long) >= OFF_LOOP_CHARS

    async def three() -> list[list[int]]:
        return [await builder.encode(short), await builder.encode(long), await builder.encode(long)]

    got = asyncio.run(three())
    assert got == [encode(short), encode(long), encode(long)]
    main = threading.main_thread().name
    # Long text never seen goes to a worker thread; seen again, its lines are cached and it stays.
    assert threads[0] == main and threads[1] != main and threads[2] == main
