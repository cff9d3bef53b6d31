"""Server and engine settings.

Precedence, highest first: command-line flags, environment variables (``DEEPSEEK_SERVE_`` prefix,
``__`` for nested keys), the YAML file given by ``--config`` or ``DEEPSEEK_SERVE_CONFIG``, defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "DEEPSEEK_SERVE_"

# Short names for the official checkpoints.
MODEL_ALIASES: dict[str, str] = {
    "deepseek-coder-1.3b-base": "deepseek-ai/deepseek-coder-1.3b-base",
    "deepseek-coder-1.3b-instruct": "deepseek-ai/deepseek-coder-1.3b-instruct",
    "deepseek-coder-6.7b-base": "deepseek-ai/deepseek-coder-6.7b-base",
    "deepseek-coder-6.7b-instruct": "deepseek-ai/deepseek-coder-6.7b-instruct",
    "deepseek-coder-33b-base": "deepseek-ai/deepseek-coder-33b-base",
    "deepseek-coder-33b-instruct": "deepseek-ai/deepseek-coder-33b-instruct",
    "deepseek-coder-v2-lite-base": "deepseek-ai/DeepSeek-Coder-V2-Lite-Base",
    "deepseek-coder-v2-lite-instruct": "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
}
MODEL_ALIASES.update({k.removeprefix("deepseek-coder-"): v for k, v in list(MODEL_ALIASES.items())})


# MODEL_SIZE of the original deployment guide picks one of its instruct checkpoints.
MODEL_SIZES: dict[str, str] = {
    "1.3b": "deepseek-ai/deepseek-coder-1.3b-instruct",
    "6.7b": "deepseek-ai/deepseek-coder-6.7b-instruct",
    "33b": "deepseek-ai/deepseek-coder-33b-instruct",
}

# Comma-separated in env and flags, a list in YAML.
CommaList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]


def resolve_alias(model: str) -> str:
    """Hub id for a short alias (case-insensitive); anything else is returned unchanged."""
    return MODEL_ALIASES.get(model.lower(), model)


class Settings(BaseSettings):
    """Everything ``deepseek-serve`` can be told. Every field is a CLI flag
    (``--max-model-len``), an environment variable (``DEEPSEEK_SERVE_MAX_MODEL_LEN``) and a YAML
    key (``max_model_len``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # --- model ---
    model: str = Field(
        "demo",
        description="Hub id, local checkpoint directory, a short alias (e.g. 6.7b-instruct), "
        "or 'demo' / 'demo-v2' for an embedded tiny random-weight model that serves offline.",
        min_length=1,
    )
    served_model_name: str | None = Field(
        None, description="Name clients use in the 'model' field (default: the --model value)."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer directory or hub id, if not the model's own."
    )
    revision: str | None = Field(None, description="Hub revision of the model.")
    kind: Literal["auto", "base", "instruct"] = Field(
        "auto", description="Checkpoint kind; 'auto' detects it from the name and tokenizer."
    )
    cache_dir: Path | None = Field(
        None,
        description="Where demo models and repaired tokenizers are written "
        "(default: $XDG_CACHE_HOME/deepseek_serve).",
    )

    # --- engine (passed to vLLM) ---
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs per engine (TP).")
    max_model_len: int | None = Field(
        None, ge=16, le=1_048_576, description="Context window; default: the model's."
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        "auto", description="Weight and activation dtype."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of accelerator memory vLLM may use."
    )
    enforce_eager: bool = Field(False, description="Disable CUDA graphs / compilation.")
    quantization: str | None = Field(
        None, description="vLLM quantization method (awq, gptq, fp8 ...)."
    )
    seed: int = Field(0, ge=0, description="Engine seed.")
    max_num_seqs: int | None = Field(
        None, ge=1, le=65536, description="Most sequences the engine runs at once."
    )
    enable_prefix_caching: bool | None = Field(
        None, description="Prefix caching (vLLM's default when unset)."
    )
    full_engine_metrics: bool = Field(
        False,
        description="Expose all of vLLM's vllm:* metrics (about sixty families, updated every "
        "engine step) instead of the lean set the dashboard reads.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument, e.g. {'kv_cache_memory_bytes': 2e9}. "
        "CLI: --engine-arg KEY=VALUE (VALUE parsed as JSON when it can be).",
    )

    # --- scale-out: engine replicas on Ray Serve (needs the 'ray' extra) ---
    replicas: int = Field(
        0,
        ge=0,
        le=1024,
        description="Engine replicas on Ray Serve, each with its own tensor_parallel_size GPUs "
        "placed together; 0: one engine in this process, without Ray.",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster for the replicas (e.g. 'head-node:6379'); "
        "default: start a local Ray instance.",
    )
    min_replicas: int | None = Field(
        None, ge=0, le=1024, description="Autoscaling: fewest replicas (set with max_replicas)."
    )
    max_replicas: int | None = Field(
        None, ge=1, le=1024, description="Autoscaling: most replicas (set with min_replicas)."
    )
    target_requests_per_replica: int = Field(
        16, ge=1, le=65536, description="Autoscaling: ongoing requests per replica to aim for."
    )
    replica_cpus: float = Field(1.0, gt=0.0, le=1024, description="CPUs Ray reserves per replica.")
    replica_gpus: float | None = Field(
        None,
        ge=0.0,
        le=64,
        description="GPUs Ray reserves per replica, on one node; default: tensor_parallel_size "
        "with a GPU build of vLLM, 0 with its CPU build.",
    )
    replica_schedule_timeout: float = Field(
        300.0,
        ge=0.0,
        le=86400.0,
        description="Seconds replicas may stay unschedulable (no Ray node has the resources "
        "one asks for; logged at once) before start-up fails; 0: wait forever.",
    )
    route_affinity: bool = Field(
        True,
        description="Route a session's (the 'user' field) and a file's (shared prompt prefix) "
        "requests to the same replica, for vLLM's prefix cache; off: least-loaded only.",
    )
    route_balance: float = Field(
        1.25,
        ge=0.0,
        le=100.0,
        description="Affinity yields to load: a replica whose share of recent requests would "
        "exceed this factor times the mean takes none just for its cache; 0: no such bound.",
    )

    # --- HTTP server ---
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    api_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="HTTP processes sharing the port and one engine (vLLM's multi-client engine "
        "core): tokenization, detokenization and streaming spread over N cores, so one Python "
        "process does not cap a fast GPU. max_requests_in_flight is shared out among them.",
    )
    keep_alive_timeout: int = Field(
        60,
        ge=1,
        le=3600,
        description="Seconds an idle keep-alive connection stays open (editors and benchmarks "
        "reuse connections; a short timeout races with their next request).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the server (vLLM's own: VLLM_LOGGING_LEVEL)."
    )
    default_completion_max_tokens: int = Field(
        16,
        ge=1,
        le=1_048_576,
        description="max_tokens of /v1/completions when not given (OpenAI: 16).",
    )

    # --- access ---
    api_keys: SecretList = Field(
        default_factory=list,
        description="API keys clients must send as 'Authorization: Bearer KEY' (comma-separated "
        "in env and flags). No keys and no key file: the API is open.",
    )
    api_key_file: Path | None = Field(
        None,
        description="File of API keys, one per line: 'KEY [name=N] [requests=R] [tokens=T] "
        "[metrics=yes]' where R and T are rate limits such as 1000/hour (they override the "
        "defaults below) and metrics=yes lets the key read /metrics; '#' starts a comment at "
        "the start of a line or of a field after the key.",
    )
    public_paths: CommaList = Field(
        default_factory=lambda: ["/health"],
        description="Exact paths served without an API key.",
    )
    public_metrics: bool = Field(
        False,
        description="Serve /metrics without an API key (e.g. for a Prometheus scrape); "
        "otherwise only key-file keys with metrics=yes read it.",
    )
    request_rate_limit: str | None = Field(
        "100/hour",
        description="Requests per key per window when API keys are set ('N/second|minute|hour|"
        "day'); none: unlimited.",
    )
    token_rate_limit: str | None = Field(
        None,
        description="Prompt plus generated tokens per key per window, e.g. '200000/minute' "
        "(each request reserves its prompt plus max_tokens per choice on admission and gives "
        "back what it did not use); none: unlimited.",
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="Origins allowed by CORS; none: CORS is off."
    )

    # --- request limits and backpressure ---
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, le=1 << 30, description="Largest request body (413 above)."
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1 << 20, description="Largest total size of request headers."
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="Most request headers.")
    max_request_target_bytes: int = Field(
        8192,
        ge=256,
        le=1 << 20,
        description="Longest request target (path and query); longer: 414, while reading.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a request's head (request line and headers) may take to arrive, "
        "from its first byte or the connection's opening; then 408 and the connection closed.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a request body may take to arrive in full; then 408 and the "
        "connection closed. The in-flight slot is taken only once the body is complete.",
    )
    max_n: int = Field(16, ge=1, le=128, description="Largest 'n' (choices per prompt).")
    max_tokens_limit: int | None = Field(
        None, ge=1, le=1_048_576, description="Largest max_tokens; default: the context window."
    )
    max_stop_sequences: int = Field(16, ge=0, le=1024, description="Most 'stop' strings.")
    max_logprobs: int = Field(20, ge=0, le=20, description="Largest logprobs / top_logprobs.")
    max_messages: int = Field(1024, ge=1, le=100_000, description="Most chat messages.")
    max_prompts: int = Field(64, ge=1, le=4096, description="Most prompts in one completion.")
    max_requests_in_flight: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Generation requests admitted at once (running or waiting in the engine); "
        "beyond it 503 with Retry-After.",
    )
    retry_after_seconds: int = Field(
        1, ge=1, le=3600, description="Retry-After sent with 503 when overloaded."
    )

    # --- lifecycle and logs ---
    shutdown_timeout: float = Field(
        30.0,
        ge=0.0,
        le=3600.0,
        description="On SIGTERM: seconds in-flight requests may take to finish before they are "
        "aborted (new requests get 503 meanwhile).",
    )
    engine_death_exit_delay: float = Field(
        2.0,
        ge=0.0,
        le=600.0,
        description="After the engine dies: seconds to keep answering 503 before the process "
        "exits non-zero (so a supervisor restarts it).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per log line, with the request id."
    )

    @field_validator("model")
    @classmethod
    def _alias(cls, value: str) -> str:
        return resolve_alias(value)

    @field_validator("api_keys", "public_paths", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("request_rate_limit", "token_rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "none", "off"):
            return None
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '100/hour': {value!r}") from exc
        return value

    @field_validator("route_balance")
    @classmethod
    def _balance(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("a factor of the mean load: 0 (off) or at least 1")
        return value

    @model_validator(mode="after")
    def _autoscaling(self) -> Settings:
        bounds = (self.min_replicas, self.max_replicas)
        if bounds.count(None) == 1:
            raise ValueError("min_replicas and max_replicas are set together")
        if self.min_replicas is not None and self.max_replicas is not None:
            if self.min_replicas > self.max_replicas:
                raise ValueError("min_replicas exceeds max_replicas")
            if self.replicas == 0:  # autoscaling runs on Ray: start at the minimum
                self.replicas = max(1, self.min_replicas)
            if not self.min_replicas <= self.replicas <= self.max_replicas:
                raise ValueError(
                    "replicas (the initial count) must lie in [min_replicas, max_replicas]"
                )
        return self

    @model_validator(mode="after")
    def _api_processes(self) -> Settings:
        if self.api_processes > 1 and self.replicas:
            raise ValueError(
                "api_processes > 1 and replicas are exclusive: with replicas, the engines run "
                "on Ray and this process only routes"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            GuideEnvSource(settings_cls),
            YamlConfigSettingsSource(settings_cls),
        )


class GuideEnvSource(PydanticBaseSettingsSource):
    """The environment names of the original DeepSeek-Coder deployment guide (``PORT``,
    ``LOG_LEVEL``, ``MODEL_SIZE``), below our own ``DEEPSEEK_SERVE_*`` names in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if port := os.environ.get("PORT"):
            out["port"] = port
        if level := os.environ.get("LOG_LEVEL"):
            out["log_level"] = level.lower()
        if size := os.environ.get("MODEL_SIZE"):
            if size.lower() not in MODEL_SIZES:
                raise ValueError(f"MODEL_SIZE must be one of {sorted(MODEL_SIZES)}, got {size!r}")
            out["model"] = MODEL_SIZES[size.lower()]
        return out


def load_settings(
    overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Settings from ``overrides`` (the CLI flags given), the environment and a YAML file."""
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if not config_file:
        return Settings(**dict(overrides or {}))
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    loaded = _FromFile(**dict(overrides or {}))
    return Settings.model_validate(loaded.model_dump())
