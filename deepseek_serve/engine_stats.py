"""The ``vllm:*`` engine metrics this server exposes: vLLM's names, labels and buckets, fewer.

vLLM's own Prometheus stat logger updates about sixty metric families from the API process on every
engine step, and observes a histogram for every generated token. On a busy stream that is one of
the larger costs of the process that also writes the HTTP responses (measured: about 4% of its CPU
at concurrency 1, see ``benchmarks/README.md``). ``EngineStatsLogger`` takes its place and keeps
what operators read: the scheduler's running and waiting requests, KV-cache usage, prefix-cache
hits, preemptions, token counters, and per-request latency histograms (queue time, time to first
token, prefill, decode, end-to-end). What it drops is per-token or per-step detail that the server's
own ``deepseek_serve_*`` metrics already give (inter-token latency) or that only some deployments
need (speculative decoding, KV connectors, LoRA, multimodal caches). ``full_engine_metrics: true``
brings vLLM's complete set back.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from vllm.v1.engine import FinishReason
from vllm.v1.metrics.buckets import BucketFamilyKey, histogram_buckets
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.prometheus import unregister_vllm_metrics

# Every vllm:* family the logger registers: (attribute, name, help). The dashboard test checks its
# panels against these names.
GAUGES = (
    ("running", "vllm:num_requests_running", "Number of requests in model execution batches."),
    ("waiting", "vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("kv_usage", "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)
COUNTERS = (
    ("prefix_queries", "vllm:prefix_cache_queries", "Prefix cache queries, in queried tokens."),
    ("prefix_hits", "vllm:prefix_cache_hits", "Prefix cache hits, in cached tokens."),
    ("preemptions", "vllm:num_preemptions", "Cumulative number of preemptions by the engine."),
    ("prompt_tokens", "vllm:prompt_tokens", "Number of prefill tokens processed."),
    ("generation_tokens", "vllm:generation_tokens", "Number of generation tokens processed."),
)
SUCCESS = ("vllm:request_success", "Count of successfully processed requests.")
# (attribute, name, help, vLLM's bucket family)
HISTOGRAMS: tuple[tuple[str, str, str, BucketFamilyKey], ...] = (
    ("ttft", "vllm:time_to_first_token_seconds", "Time to first token in seconds.",
     "time_to_first_token"),
    ("queue_time", "vllm:request_queue_time_seconds", "Time spent in WAITING phase for request.",
     "request_latency"),
    ("prefill_time", "vllm:request_prefill_time_seconds",
     "Time spent in PREFILL phase for request.", "request_latency"),
    ("decode_time", "vllm:request_decode_time_seconds", "Time spent in DECODE phase for request.",
     "request_latency"),
    ("e2e_time", "vllm:e2e_request_latency_seconds", "E2e request latency in seconds.",
     "request_latency"),
)  # fmt: skip
FAMILIES = (
    *(n for _, n, _ in GAUGES),
    *(n for _, n, _ in COUNTERS),
    SUCCESS[0],
    *(n for _, n, _, _ in HISTOGRAMS),
)


class EngineStatsLogger(PrometheusStatLogger):
    """Replaces vLLM's Prometheus logger (vLLM adds its own only when no given logger is one).

    ``PrometheusStatLogger.__init__`` is deliberately not called: it would register every family.
    """

    # One child per engine index, set from the tables above.
    running: dict[int, Gauge]
    waiting: dict[int, Gauge]
    kv_usage: dict[int, Gauge]
    prefix_queries: dict[int, Counter]
    prefix_hits: dict[int, Counter]
    preemptions: dict[int, Counter]
    prompt_tokens: dict[int, Counter]
    generation_tokens: dict[int, Counter]
    ttft: dict[int, Histogram]
    queue_time: dict[int, Histogram]
    prefill_time: dict[int, Histogram]
    decode_time: dict[int, Histogram]
    e2e_time: dict[int, Histogram]

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
        self.vllm_config = vllm_config
        self.engine_indexes = engine_indexes or [0]
        unregister_vllm_metrics()  # type: ignore[no-untyped-call]  # a previous engine's
        model = vllm_config.model_config.served_model_name
        labels = ["model_name", "engine"]
        values = {i: (model, str(i)) for i in self.engine_indexes}
        overrides = vllm_config.observability_config.custom_histogram_buckets

        def per_engine(metric: Any) -> dict[int, Any]:
            return {i: metric.labels(*v) for i, v in values.items()}

        for attr, name, doc in GAUGES:
            gauge = Gauge(name, doc, labels, multiprocess_mode="mostrecent")
            setattr(self, attr, per_engine(gauge))
        for attr, name, doc in COUNTERS:
            setattr(self, attr, per_engine(Counter(name, doc, labels)))
        for attr, name, doc, family in HISTOGRAMS:
            buckets = histogram_buckets(family, overrides=overrides)
            setattr(self, attr, per_engine(Histogram(name, doc, labels, buckets=buckets)))
        success = Counter(*SUCCESS, [*labels, "finished_reason"])
        self.success = {
            (i, reason): success.labels(*v, str(reason))
            for i, v in values.items()
            for reason in FinishReason
        }

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.running[engine_idx].set(scheduler_stats.num_running_reqs)
            self.waiting[engine_idx].set(
                scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            )
            self.kv_usage[engine_idx].set(scheduler_stats.kv_cache_usage)
            prefix = scheduler_stats.prefix_cache_stats
            if prefix.queries:
                self.prefix_queries[engine_idx].inc(prefix.queries)
                self.prefix_hits[engine_idx].inc(prefix.hits)
        if iteration_stats is None:
            return
        # Counters move only when there is something to count: most steps of a decode batch have
        # no prompt tokens, preemptions or finished requests.
        if iteration_stats.num_preempted_reqs:
            self.preemptions[engine_idx].inc(iteration_stats.num_preempted_reqs)
        if iteration_stats.num_prompt_tokens:
            self.prompt_tokens[engine_idx].inc(iteration_stats.num_prompt_tokens)
        if iteration_stats.num_generation_tokens:
            self.generation_tokens[engine_idx].inc(iteration_stats.num_generation_tokens)
        for ttft in iteration_stats.time_to_first_tokens_iter:
            self.ttft[engine_idx].observe(ttft)
        for done in iteration_stats.finished_requests:
            self.success[engine_idx, done.finish_reason].inc()
            self.queue_time[engine_idx].observe(done.queued_time)
            self.prefill_time[engine_idx].observe(done.prefill_time)
            self.decode_time[engine_idx].observe(done.decode_time)
            self.e2e_time[engine_idx].observe(done.e2e_latency)

    # vLLM calls these on every Prometheus logger; this one has nothing to add.
    def record_admission_rejection(self, reason: str) -> None:
        pass

    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass
