"""Benchmark metrics, defined as ``vllm bench serve`` defines them, and its JSON result keys.

- throughput: completed requests, output tokens and input+output tokens over the run's duration;
- TTFT: to the first token chunk; TPOT: ``(latency - ttft) / (output_tokens - 1)`` for requests
  with more than one output token; ITL: every gap between token chunks, pooled over requests;
  E2EL: the request's latency. Each gets mean, median, std and the chosen percentiles, in ms;
- goodput: completed requests per second meeting every SLO given (ms), with TPOT 0 for requests of
  one token, as vLLM counts it;
- peak output tokens/s and peak concurrent requests over one-second buckets.

Beyond vLLM: ``cancelled`` (cancelled by the client on purpose; neither completed nor failed) and
``failures_by_status`` (HTTP status, or ``"connection"`` when no response came).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepseek_serve.bench.client import RequestOutput

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def percentile_key(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def _stats(values: Sequence[float], percentiles: Sequence[float], name: str) -> dict[str, float]:
    """mean/median/std/pN of ``values`` (seconds) in ms; all 0 when empty, like vLLM."""
    arr = np.asarray(values if len(values) else [0.0], dtype=float)
    out = {
        f"mean_{name}_ms": float(np.mean(arr)) * 1000,
        f"median_{name}_ms": float(np.median(arr)) * 1000,
        f"std_{name}_ms": float(np.std(arr)) * 1000,
    }
    for p in percentiles:
        out[f"p{percentile_key(p)}_{name}_ms"] = float(np.percentile(arr, p)) * 1000
    return out


def _peaks(outputs: Sequence[RequestOutput]) -> tuple[float, int]:
    ok = [o for o in outputs if o.success]
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    end = max(o.start_time + o.latency for o in ok)
    buckets = math.ceil(end - t0) + 1
    tokens = np.zeros(buckets)
    running = np.zeros(buckets)
    for o in ok:
        t = o.start_time + o.ttft
        times = [t]
        for gap in o.itl:
            t += gap
            times.append(t)
        for when in times:
            b = int(when - t0)
            if 0 <= b < buckets:
                tokens[b] += 1
        first, last = int(o.start_time - t0), int(o.start_time + o.latency - t0)
        running[first : last + 1] += 1
    return float(tokens.max()), int(running.max())


def compute_metrics(
    outputs: Sequence[RequestOutput],
    duration: float,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput_slos: dict[str, float] | None = None,
    include_details: bool = True,
) -> dict[str, Any]:
    """The ``vllm bench serve`` result dict (generation task) for ``outputs``; SLOs in ms by
    metric name (``ttft``, ``tpot``, ``e2el``)."""
    output_lens: list[int] = []
    input_total = 0
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    completed = 0
    for o in outputs:
        if not o.success:
            output_lens.append(0)
            continue
        n = o.output_tokens or 1  # vLLM's fallback when a server sends no usage and no tokenizer
        output_lens.append(n)
        input_total += o.prompt_len
        tpot = (o.latency - o.ttft) / (n - 1) if n > 1 else 0.0
        if n > 1:
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls.extend(o.itl)
        ttfts.append(o.ttft)
        e2els.append(o.latency)
        completed += 1
    cancelled = sum(1 for o in outputs if o.cancelled)
    failures = Counter(
        "connection" if o.status is None else str(o.status)
        for o in outputs
        if not o.success and not o.cancelled
    )
    good = 0
    slos = goodput_slos or {}
    if slos:
        series = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        for i in range(completed):
            if all(series[k][i] <= v / 1000 for k, v in slos.items()):
                good += 1
    total_output = sum(output_lens)
    peak_tokens, peak_running = _peaks(outputs)
    result: dict[str, Any] = {
        "duration": duration,
        "completed": completed,
        "failed": sum(failures.values()),
        "cancelled": cancelled,
        "failures_by_status": dict(sorted(failures.items())),
        "total_input_tokens": input_total,
        "total_output_tokens": total_output,
        "request_throughput": completed / duration if duration > 0 else 0.0,
        "request_goodput": (good / duration if duration > 0 else 0.0) if slos else None,
        "output_throughput": total_output / duration if duration > 0 else 0.0,
        "total_token_throughput": (input_total + total_output) / duration if duration > 0 else 0.0,
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_running,
    }
    for name, values in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        result.update(_stats(values, percentiles, name))
    if include_details:
        result.update(
            {
                "input_lens": [o.prompt_len for o in outputs],
                "output_lens": output_lens,
                "ttfts": [o.ttft for o in outputs],
                "itls": [o.itl for o in outputs],
                "latencies": [o.latency for o in outputs],
                "start_times": [o.start_time for o in outputs],
                "queue_times": [o.client_queue_time for o in outputs],
                "generated_texts": [o.generated_text for o in outputs],
                "errors": [o.error for o in outputs],
            }
        )
    return result


def parse_goodput(items: Sequence[str]) -> dict[str, float]:
    """``["ttft:200", "tpot:50"]`` -> ``{"ttft": 200.0, "tpot": 50.0}`` (ms)."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise ValueError(f"goodput SLO {item!r}: expected ttft|tpot|e2el:MILLISECONDS")
        ms = float(value)
        if ms < 0:
            raise ValueError(f"goodput SLO {item!r} must not be negative")
        out[name] = ms
    return out


def round_ratio_intervals(
    tokens: Sequence[Sequence[int]],
    durations: Sequence[Sequence[float]],
    ttfts: Sequence[Sequence[Sequence[float]]],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Confidence intervals of target A's ratios to target B from interleaved rounds
    (``[target][round]``), by a paired block bootstrap: it resamples whole blocks of two rounds
    (turns A B B A, the unit in which each target goes first once and second once), and
    recomputes the pooled ratios the comparison reports (output tokens over summed turn
    durations; median TTFT over the pooled requests).

    Blocks, not requests or single rounds, because a shared machine's noise comes in stretches
    that span neighbouring turns; resampling single rounds gave intervals far too narrow in A/A
    runs (one server compared with itself). Blocks are better but not enough on a noisy 2-core
    VM either: there, A/A intervals still missed 1.0 in 3 of 12 cases (benchmarks/README.md).
    An interval that excludes 1.0 is a difference this run tells apart from its own noise; how
    far that carries to the next run is what an A/A comparison on the same machine says.
    """
    n_rounds = len(durations[0]) if durations else 0
    if len(tokens) != 2 or len(durations) != 2 or len(ttfts) != 2 or n_rounds < 2:
        return {}
    blocks = [list(range(k, min(k + 2, n_rounds))) for k in range(0, n_rounds, 2)]
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(blocks), size=(resamples, len(blocks)))
    tok = np.asarray(tokens, dtype=float)
    dur = np.asarray(durations, dtype=float)
    # rounds of each resample, as a (resamples, rounds) 0/1 count matrix: a block drawn twice
    # counts its rounds twice
    counts = np.zeros((resamples, n_rounds))
    for b, rounds in enumerate(blocks):
        counts[:, rounds] += (chosen == b).sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        thr_a = (counts @ tok[0]) / (counts @ dur[0])
        thr_b = (counts @ tok[1]) / (counts @ dur[1])
        thr_ratio = thr_a / thr_b
    ttft_ratio = np.full(resamples, np.nan)
    rounds_a = [np.asarray(r, dtype=float) for r in ttfts[0]]
    rounds_b = [np.asarray(r, dtype=float) for r in ttfts[1]]
    for i, row in enumerate(counts.astype(int)):
        a = np.concatenate([np.tile(rounds_a[k], c) for k, c in enumerate(row) if c])
        b = np.concatenate([np.tile(rounds_b[k], c) for k, c in enumerate(row) if c])
        if a.size and b.size:
            mb = np.median(b)
            ttft_ratio[i] = np.median(a) / mb if mb > 0 else np.nan
    tail = (1.0 - level) / 2 * 100
    out: dict[str, tuple[float, float]] = {}
    for name, values in (("output_throughput", thr_ratio), ("median_ttft", ttft_ratio)):
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = np.percentile(finite, [tail, 100 - tail])
            out[name] = (float(lo), float(hi))
    return out
