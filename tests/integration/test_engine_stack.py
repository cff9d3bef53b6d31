"""The tokenizer and checkpoint as the engine's own stack (vLLM's loader, the transformers it
brings, torch) sees them: the trap the start-up repair exists for, and the offline demo model."""

from __future__ import annotations

import json
from pathlib import Path

from vllm.tokenizers import registry

from deepseek_serve.demo import is_demo_dir
from deepseek_serve.prompts.tokenizer import fidelity_problems, load_hf_tokenizer, prepare_tokenizer
from deepseek_serve.prompts.variant import detect_variant
from deepseek_serve.server import check_tokenizer, resolve_model
from deepseek_serve.settings import Settings
from tests.conftest import FIXTURES, model_dir_with

HUB_LAYOUT = FIXTURES / "deepseek-coder-hub-layout"
GOLDEN_HELLO = [32013, 17535, 1835]  # "Hello world" by the original tokenizer, BOS included


def test_hub_layout_is_wrong_when_loaded_raw() -> None:
    """The trap: the transformers vLLM runs with mis-loads the original hub files."""
    hf = load_hf_tokenizer(HUB_LAYOUT)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "bos_token_id": 32013}
    tokenizer_config = json.loads((HUB_LAYOUT / "tokenizer_config.json").read_text())
    variant = detect_variant(config, tokenizer_config, hf)
    assert hf.encode("Hello world") != GOLDEN_HELLO
    problems = fidelity_problems(hf, variant)
    assert any("BOS" in p for p in problems)
    assert any("golden" in p for p in problems)


def test_repaired_dir_through_vllm_loader(tmp_path: Path) -> None:
    setup = prepare_tokenizer(model_dir_with(tmp_path / "m", "demo", HUB_LAYOUT), work_dir=tmp_path)
    engine_tokenizer = registry.get_tokenizer(str(setup.tokenizer_dir))
    assert engine_tokenizer.encode("Hello world") == GOLDEN_HELLO
    assert fidelity_problems(engine_tokenizer, setup.variant) == []


def test_demo_model_is_built_offline(tmp_path: Path) -> None:
    resolved = resolve_model(Settings(model="demo", cache_dir=tmp_path))
    assert resolved.is_demo and is_demo_dir(resolved.files_dir)
    config = json.loads((resolved.files_dir / "config.json").read_text())
    assert config["vocab_size"] == 32256 and config["architectures"] == ["LlamaForCausalLM"]
    assert (resolved.files_dir / "model.safetensors").is_file()
    setup = check_tokenizer(Settings(model="demo", cache_dir=tmp_path), resolved)
    assert not setup.repaired and setup.variant.kind.value == "instruct"
