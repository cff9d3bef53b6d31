"""The lean engine stat logger reports what vLLM's Prometheus logger reports, family for family."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY
from vllm.config import VllmConfig
from vllm.v1.engine import FinishReason
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.stats import (
    FinishedRequestStats,
    IterationStats,
    PrefixCacheStats,
    SchedulerStats,
)

from deepseek_serve.engine_stats import FAMILIES, EngineStatsLogger


def config() -> Any:
    cfg = VllmConfig()
    cfg.model_config = SimpleNamespace(  # only what the loggers read
        served_model_name="demo", max_model_len=4096, is_diffusion=False
    )
    return cfg


def steps() -> list[tuple[SchedulerStats | None, IterationStats | None]]:
    """A prefill step, a decode step with a preemption, a step finishing two requests, and a
    step without iteration stats (as vLLM sends when nothing was output) that leaves requests
    waiting."""
    prefill = IterationStats()
    prefill.prompt_token_stats.total = 300
    prefill.prompt_token_stats.computed = 260
    prefill.prompt_token_stats.local_cache_hit = 40
    prefill.prompt_token_stats.cached_tokens = 40
    prefill.num_generation_tokens = 2
    prefill.time_to_first_tokens_iter = [0.05, 0.31]
    decode = IterationStats()
    decode.num_generation_tokens = 2
    decode.num_preempted_reqs = 1
    decode.inter_token_latencies_iter = [0.012, 0.013]
    finish = IterationStats()
    finish.num_generation_tokens = 1
    finish.finished_requests = [
        FinishedRequestStats(
            FinishReason.LENGTH, e2e_latency=1.5, queued_time=0.02, prefill_time=0.2,
            decode_time=1.2, inference_time=1.4, num_prompt_tokens=200, num_generation_tokens=64,
        ),
        FinishedRequestStats(
            FinishReason.STOP, e2e_latency=0.4, queued_time=3.0, prefill_time=0.1,
            decode_time=0.3, inference_time=0.4, num_prompt_tokens=100, num_generation_tokens=9,
        ),
    ]  # fmt: skip
    busy = SchedulerStats(
        num_running_reqs=2,
        num_waiting_reqs=1,
        num_skipped_waiting_reqs=1,
        kv_cache_usage=0.25,
        prefix_cache_stats=PrefixCacheStats(requests=2, queries=300, hits=40),
    )
    idle = SchedulerStats(kv_cache_usage=0.0)
    queued = SchedulerStats(  # the gauges' last values
        num_running_reqs=1, num_waiting_reqs=2, num_skipped_waiting_reqs=3, kv_cache_usage=0.5
    )
    return [(busy, prefill), (busy, decode), (idle, finish), (queued, None)]


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every vllm:* sample now in the default registry, without ``_created`` timestamps."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        if family.name.startswith("vllm:")
        for s in family.samples
        if not s.name.endswith("_created")
    }


def recorded(logger_class: type) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    logger = logger_class(config(), [0])
    for scheduler, iteration in steps():
        logger.record(scheduler, iteration, engine_idx=0)
    return samples()


def family_of(sample_name: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in FAMILIES:
            return sample_name.removesuffix(suffix)
    return sample_name


def test_lean_samples_equal_vllms_for_every_family_it_keeps() -> None:
    full = recorded(PrometheusStatLogger)
    lean = recorded(EngineStatsLogger)
    assert {family_of(name) for name, _ in lean} == set(FAMILIES)
    kept = {key: value for key, value in full.items() if family_of(key[0]) in FAMILIES}
    assert lean == kept
    # The steps moved every kind of series (so equality is not between zeros).
    assert lean[("vllm:num_preemptions_total", (("engine", "0"), ("model_name", "demo")))] == 1
    assert lean[("vllm:prefix_cache_hits_total", (("engine", "0"), ("model_name", "demo")))] == 80
    labels = (("engine", "0"), ("finished_reason", "stop"), ("model_name", "demo"))
    assert lean[("vllm:request_success_total", labels)] == 1
    assert lean[("vllm:request_queue_time_seconds_count", labels[::2])] == 2
    assert lean[("vllm:num_requests_waiting", labels[::2])] == 5


def test_lean_logger_replaces_vllms_and_drops_per_token_families() -> None:
    lean = recorded(EngineStatsLogger)
    names = {family_of(name) for name, _ in lean}
    assert "vllm:inter_token_latency_seconds" not in names
    assert "vllm:iteration_tokens_total" not in names
    # vLLM adds its own Prometheus logger only when no given logger is one.
    assert issubclass(EngineStatsLogger, PrometheusStatLogger)


def test_a_second_engine_in_the_process_registers_again() -> None:
    recorded(EngineStatsLogger)
    again = recorded(EngineStatsLogger)  # would raise "Duplicated timeseries" otherwise
    key = ("vllm:generation_tokens_total", (("engine", "0"), ("model_name", "demo")))
    assert again[key] == 5
