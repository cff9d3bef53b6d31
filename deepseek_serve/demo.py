"""Tiny random-weight DeepSeek-Coder checkpoints built locally, for offline serving and tests.

The weights are noise; the tokenizer is the real DeepSeek one shipped as package data, so every
layer above the weights (templates, stop tokens, FIM, validation, streaming) behaves as with the
real checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from deepseek_serve.settings import Settings

DEMO_MARKER = "deepseek_serve_demo.json"
_BUILD_VERSION = 2


@dataclass(frozen=True, slots=True)
class DemoSpec:
    name: str
    tokenizer: str
    architecture: str
    config: dict[str, Any]


_V1_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32256,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16384,
    "rope_theta": 100000.0,
    "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": 4.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 32013,
    "eos_token_id": 32021,
}

# MLA on CPU accepts only some head sizes; these are V2-Lite's own.
_V2_CONFIG: dict[str, Any] = {
    "model_type": "deepseek_v2",
    "vocab_size": 102400,
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "max_position_embeddings": 16384,
    "tie_word_embeddings": True,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
}

DEMOS: dict[str, DemoSpec] = {
    "demo": DemoSpec("demo", "deepseek-coder", "LlamaForCausalLM", _V1_CONFIG),
    "demo-v2": DemoSpec("demo-v2", "deepseek-coder-v2", "DeepseekV2ForCausalLM", _V2_CONFIG),
}


def packaged_tokenizer_dir(name: str) -> Path:
    """Directory of a tokenizer shipped with the package (``deepseek-coder``, ``golden`` ...)."""
    return Path(str(resources.files("deepseek_serve") / "data" / "tokenizers" / name))


def default_cache_dir() -> Path:
    root = os.environ.get("DEEPSEEK_SERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepseek_serve"
    )
    return Path(root)


def demo_dir(name: str, cache_root: Path | None = None) -> Path:
    """Where the demo checkpoint ``name`` lives; the build version keeps stale builds apart."""
    return (cache_root or default_cache_dir()) / "models" / f"{name}.build{_BUILD_VERSION}"


def is_demo_dir(path: str | Path) -> bool:
    return (Path(path) / DEMO_MARKER).is_file()


def build_demo_model(
    name: str = "demo",
    target: Path | None = None,
    *,
    tokenizer_dir: Path | None = None,
    seed: int = 0,
) -> Path:
    """Build (once) and return the directory of a tiny random-weight checkpoint.

    ``tokenizer_dir`` replaces the packaged tokenizer files, for example with the hub's original
    layout, to exercise the start-up tokenizer repair.
    """
    spec = DEMOS[name]
    tok_src = tokenizer_dir or packaged_tokenizer_dir(spec.tokenizer)
    target = target or demo_dir(name)
    if is_demo_dir(target):
        return target

    # Heavy imports only when a model really has to be built.
    import torch
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config_cls = transformers.AutoConfig.for_model(spec.config["model_type"]).__class__
        config = config_cls(**{k: v for k, v in spec.config.items() if k != "model_type"})
        config.architectures = [spec.architecture]
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.bfloat16
        )
        model.save_pretrained(staging)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(tok_src / file, staging / file)
        (staging / "generation_config.json").write_text(
            json.dumps(
                {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id},
                indent=2,
            )
        )
        (staging / DEMO_MARKER).write_text(
            json.dumps({"name": name, "seed": seed, "random_weights": True})
        )
        try:
            staging.rename(target)
        except OSError:
            if not is_demo_dir(target):  # lost a race to nobody: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# The demo models' KV cache when none is asked for: about a quarter million tokens of the demo
# model, plenty for a model that exists to exercise the stack.
DEMO_KV_CACHE_BYTES = 256 * 1024 * 1024


def demo_engine_settings(settings: Settings) -> Settings:
    """Engine settings for a demo model: unless a KV-cache size or memory share was chosen, a
    fixed small KV cache (``DEMO_KV_CACHE_BYTES``) instead of vLLM's default share of the whole
    device (90% of a GPU, or on CPU of the NUMA node's memory, which fails at start-up wherever
    other processes hold memory), because the model is a few megabytes, whatever the device."""
    default_share = Settings.model_fields["gpu_memory_utilization"].default
    if (
        "kv_cache_memory_bytes" in settings.engine_args
        or settings.gpu_memory_utilization != default_share
    ):
        return settings
    engine_args = {**settings.engine_args, "kv_cache_memory_bytes": DEMO_KV_CACHE_BYTES}
    return settings.model_copy(update={"engine_args": engine_args})
