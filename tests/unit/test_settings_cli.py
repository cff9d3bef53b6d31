"""Settings precedence, the CLI and start-up decisions that need no engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from deepseek_serve.cli import main, parse_engine_args, settings_from_argv
from deepseek_serve.engine import VLLMEngine
from deepseek_serve.server import ResolvedModel, StartupError, check_tokenizer
from deepseek_serve.settings import Settings, load_settings
from tests.conftest import model_dir_with


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DEEPSEEK_SERVE_") or key in ("PORT", "LOG_LEVEL", "MODEL_SIZE"):
            monkeypatch.delenv(key)


def test_precedence_cli_over_env_over_yaml_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "port: 1111\nmax_model_len: 2048\ndtype: float16\n"
        "engine_args:\n  max_num_batched_tokens: 512\n"
    )
    monkeypatch.setenv("DEEPSEEK_SERVE_PORT", "2222")
    monkeypatch.setenv("DEEPSEEK_SERVE_MAX_MODEL_LEN", "3072")
    s = load_settings({"port": 3333}, config)
    assert s.port == 3333  # flag beats env and file
    assert s.max_model_len == 3072  # env beats file
    assert s.dtype == "float16"  # file beats default
    assert s.engine_args == {"max_num_batched_tokens": 512}
    assert s.tensor_parallel_size == 1  # default


def test_config_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("enforce_eager: true\n")
    monkeypatch.setenv("DEEPSEEK_SERVE_CONFIG", str(config))
    assert load_settings().enforce_eager is True


def test_repo_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert {p.name for p in configs} >= {"cpu.yaml", "production.yaml", "deploy.yaml"}, configs
    for path in configs:
        load_settings({}, path)


def test_bounds_and_unknown_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(tensor_parallel_size=0)
    with pytest.raises(ValueError):
        Settings(gpu_memory_utilization=1.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tensor_paralel_size: 2\n")
    with pytest.raises(ValueError):
        load_settings({}, bad)


def test_aliases_map_to_hub_ids() -> None:
    assert Settings(model="6.7b-instruct").model == "deepseek-ai/deepseek-coder-6.7b-instruct"
    assert Settings(model="deepseek-coder-33b-base").model == "deepseek-ai/deepseek-coder-33b-base"
    assert Settings(model="V2-Lite-Instruct").model == "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"
    assert Settings(model="/models/mine").model == "/models/mine"


def test_cli_flags_and_engine_arg_passthrough() -> None:
    s = settings_from_argv(
        [
            "--model",
            "1.3b-base",
            "--tensor-parallel-size",
            "2",
            "--max-model-len",
            "8192",
            "--dtype",
            "bfloat16",
            "--gpu-memory-utilization",
            "0.8",
            "--enforce-eager",
            "--quantization",
            "awq",
            "--served-model-name",
            "coder",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--engine-arg",
            "max_num_batched_tokens=4096",
            "--engine-arg",
            "kv-cache-dtype=fp8",
        ]
    )
    args = VLLMEngine(s, "m", "t").engine_args()
    assert args["model"] == "m" and args["tokenizer"] == "t"
    assert args["tensor_parallel_size"] == 2 and args["max_model_len"] == 8192
    assert args["dtype"] == "bfloat16" and args["gpu_memory_utilization"] == 0.8
    assert args["enforce_eager"] is True and args["quantization"] == "awq"
    assert args["served_model_name"] == "coder"
    assert args["max_num_batched_tokens"] == 4096 and args["kv_cache_dtype"] == "fp8"
    assert s.host == "0.0.0.0" and s.port == 9000


def test_cli_rejects_bad_values() -> None:
    with pytest.raises(SystemExit, match="tensor_parallel_size"):
        settings_from_argv(["--tensor-parallel-size", "0"])
    with pytest.raises(SystemExit):
        parse_engine_args(["novalue"])


def test_api_processes_are_bounded_and_exclusive_with_replicas() -> None:
    from deepseek_serve.api_processes import per_process_settings

    assert settings_from_argv(["--api-processes", "4"]).api_processes == 4
    with pytest.raises(SystemExit, match="api_processes"):
        settings_from_argv(["--api-processes", "0"])
    with pytest.raises(SystemExit, match="api_processes > 1 and replicas are exclusive"):
        settings_from_argv(["--api-processes", "2", "--replicas", "2"])
    # The in-flight limit is the server's: each of N processes admits its share (rounded up).
    shared = settings_from_argv(["--api-processes", "3", "--max-requests-in-flight", "10"])
    assert per_process_settings(shared).max_requests_in_flight == 4


def test_unrepairable_tokenizer_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = model_dir_with(tmp_path / "broken", "demo")
    data = json.loads((model / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["Hello"], vocab["Ġworld"] = vocab["Ġworld"], vocab["Hello"]  # a silently wrong vocab
    (model / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(StartupError, match="golden"):
        check_tokenizer(
            Settings(model=str(model), cache_dir=tmp_path), ResolvedModel(str(model), model, False)
        )
    # and the CLI exits non-zero with the message, before any engine starts
    code = main(["--model", str(model), "--cache-dir", str(tmp_path)])
    assert code == 2
    assert "cannot start" in capsys.readouterr().err


def test_not_a_deepseek_model_refuses_to_start(tmp_path: Path) -> None:
    model = model_dir_with(tmp_path / "m", "demo")
    shutil.copyfile(model / "config.json", tmp_path / "c.json")
    (model / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(StartupError):
        check_tokenizer(
            Settings(model=str(model), cache_dir=tmp_path), ResolvedModel(str(model), model, False)
        )


def test_deployment_guide_env_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "7000")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MODEL_SIZE", "33B")
    s = load_settings()
    assert (s.port, s.log_level) == (7000, "warning")
    assert s.model == "deepseek-ai/deepseek-coder-33b-instruct"
    # our own names win over the guide's, and flags over both
    monkeypatch.setenv("DEEPSEEK_SERVE_PORT", "7001")
    assert load_settings().port == 7001
    assert load_settings({"port": 7002}).port == 7002
    config = tmp_path / "c.yaml"
    config.write_text("port: 7003\nmodel: demo\n")
    monkeypatch.delenv("DEEPSEEK_SERVE_PORT")
    assert load_settings(None, config).port == 7000  # env (guide names too) over the file
    monkeypatch.setenv("MODEL_SIZE", "7b")
    with pytest.raises(ValueError, match="MODEL_SIZE"):
        load_settings()


def test_list_settings_from_env_flags_and_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_SERVE_API_KEYS", "sk-a, sk-b,")
    s = load_settings({"cors_origins": "https://a.example,https://b.example"})
    assert [k.get_secret_value() for k in s.api_keys] == ["sk-a", "sk-b"]
    assert "sk-a" not in repr(s)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    config = tmp_path / "c.yaml"
    config.write_text("public_paths: [/health, /version]\nrequest_rate_limit: none\n")
    s = load_settings(None, config)
    assert s.public_paths == ["/health", "/version"]
    assert s.request_rate_limit is None
    with pytest.raises(ValidationError, match="rate limit"):
        load_settings({"token_rate_limit": "lots"})


def test_the_demo_model_gets_a_small_kv_cache_unless_one_is_chosen() -> None:
    """Issue 16: ``deepseek-serve --model demo`` without configs/cpu.yaml let vLLM take 90% of
    the node's memory for a 4.5M-parameter model, and failed wherever other processes held
    memory. The demo's default KV cache is sized for the demo, on any device."""
    from deepseek_serve.demo import DEMO_KV_CACHE_BYTES, demo_engine_settings

    plain = demo_engine_settings(settings_from_argv(["--model", "demo"]))
    args = VLLMEngine(plain, "m", "t").engine_args()
    assert args["kv_cache_memory_bytes"] == DEMO_KV_CACHE_BYTES
    # what the user chose stays
    chosen = settings_from_argv(["--model", "demo", "--gpu-memory-utilization", "0.5"])
    assert "kv_cache_memory_bytes" not in demo_engine_settings(chosen).engine_args
    sized = settings_from_argv(["--model", "demo", "--engine-arg", "kv_cache_memory_bytes=1e9"])
    assert demo_engine_settings(sized).engine_args["kv_cache_memory_bytes"] == 1e9
    configs = Path(__file__).resolve().parents[2] / "configs"
    cpu = settings_from_argv(["--config", str(configs / "cpu.yaml"), "--model", "demo"])
    assert demo_engine_settings(cpu).engine_args == cpu.engine_args


def test_metrics_dirs_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    """A server killed outright leaves its Prometheus multiprocess directory; the next start
    removes it, and never one whose server still runs."""
    import os
    import subprocess
    import sys

    from deepseek_serve.api_processes import METRICS_DIR_PREFIX, remove_stale_metrics_dirs

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f"{METRICS_DIR_PREFIX}{gone.stdout.strip()}-abc"
    alive = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{METRICS_DIR_PREFIX}old-style"
    for path in (dead, alive, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_dirs(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
