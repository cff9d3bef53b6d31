"""Printing and saving results: the summary table, the comparison table, JSON, PNG plots and a
Markdown report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepseek_serve.bench.metrics import LATENCY_METRICS, percentile_key

_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL"}
_HEADERS = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def summary(result: dict[str, Any], percentiles: Sequence[float], title: str = "") -> str:
    """vLLM's result layout, plus cancellations and failures by status."""
    lines = [
        "{s:{c}^{n}}".format(s=f" Serving Benchmark Result {title}".rstrip() + " ", n=60, c="=")
    ]

    def row(label: str, value: Any, fmt: str = "") -> None:
        lines.append(f"{label:<44} {value:{fmt}}")

    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    if result["failures_by_status"]:
        row("Failures by status:", json.dumps(result["failures_by_status"]))
    row("Cancelled requests:", result["cancelled"])
    if "abandoned_tokens" in result:
        row("Tokens decoded after their request ended:", int(result["abandoned_tokens"]))
        row("  share of all tokens decoded (%):", 100 * result["abandoned_token_share"], ".2f")
    if result.get("max_concurrency") is not None:
        row("Maximum request concurrency:", result["max_concurrency"])
    if result.get("request_rate") not in (None, "inf"):
        row("Request rate configured (RPS):", float(result["request_rate"]), ".2f")
    row("Benchmark duration (s):", result["duration"], ".2f")
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"], ".2f")
    if result.get("request_goodput") is not None:
        row("Request goodput (req/s):", result["request_goodput"], ".2f")
    row("Output token throughput (tok/s):", result["output_throughput"], ".2f")
    row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"], ".2f")
    row("Peak concurrent requests:", result["max_concurrent_requests"])
    row("Total token throughput (tok/s):", result["total_token_throughput"], ".2f")
    if "server_api_cpu_s" in result:
        row("Server API process CPU (s):", result["server_api_cpu_s"], ".2f")
        row("Server engine processes CPU (s):", result["server_engine_cpu_s"], ".2f")
        row(
            "Server API CPU per output token (us):",
            result["server_api_cpu_us_per_output_token"],
            ".1f",
        )
    for m in LATENCY_METRICS:
        lines.append("{s:{c}^{n}}".format(s=_HEADERS[m], n=60, c="-"))
        row(f"Mean {_NAMES[m]} (ms):", result[f"mean_{m}_ms"], ".2f")
        row(f"Median {_NAMES[m]} (ms):", result[f"median_{m}_ms"], ".2f")
        for p in percentiles:
            k = percentile_key(p)
            row(f"P{k} {_NAMES[m]} (ms):", result[f"p{k}_{m}_ms"], ".2f")
    lines.append("=" * 60)
    return "\n".join(lines)


def compare_rows(percentiles: Sequence[float]) -> list[tuple[str, str, bool]]:
    """``(result key, label, higher is better)`` of the metrics a comparison prints."""
    rows = [
        ("request_throughput", "Request throughput (req/s)", True),
        ("output_throughput", "Output token throughput (tok/s)", True),
        ("total_token_throughput", "Total token throughput (tok/s)", True),
    ]
    rows += [
        ("server_api_cpu_us_per_output_token", "Server API CPU (us/output token)", False),
        ("server_total_cpu_us_per_output_token", "Server total CPU (us/output token)", False),
    ]
    for m in LATENCY_METRICS:
        rows.append((f"mean_{m}_ms", f"Mean {_NAMES[m]} (ms)", False))
        rows.append((f"median_{m}_ms", f"Median {_NAMES[m]} (ms)", False))
        for p in percentiles:
            k = percentile_key(p)
            if k != "50":
                rows.append((f"p{k}_{m}_ms", f"P{k} {_NAMES[m]} (ms)", False))
    return rows


def ratio(a: float, b: float) -> float:
    return a / b if b else (math.inf if a else 1.0)


def compare_table(
    a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str], percentiles: Sequence[float]
) -> list[tuple[str, float, float, float]]:
    return [
        (label, a[key], b[key], ratio(a[key], b[key]))
        for key, label, _ in compare_rows(percentiles)
        if key in a and key in b
    ]


def format_compare(
    a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str], percentiles: Sequence[float]
) -> str:
    la, lb = labels
    head = f"{'metric':<34} {la:>12} {lb:>12} {la + '/' + lb:>12}"
    lines = [head, "-" * len(head)]
    for label, va, vb, r in compare_table(a, b, labels, percentiles):
        lines.append(f"{label:<34} {va:>12.2f} {vb:>12.2f} {r:>11.3f}x")
    lines.append(
        f"{'Completed / failed / cancelled':<34} "
        f"{a['completed']:>4}/{a['failed']}/{a['cancelled']:<6} "
        f"{b['completed']:>4}/{b['failed']}/{b['cancelled']:<6}"
    )
    spread = a.get("round_output_throughput_ratios")
    if spread:
        lines.append(
            f"per-round output throughput {la}/{lb}: "
            + " ".join(f"{x:.3f}" for x in spread)
            + f"  (median {sorted(spread)[len(spread) // 2]:.3f})"
        )
    intervals = [
        f"{name} {la}/{lb} {a[key][0]:.3f}-{a[key][1]:.3f}x"
        for key, name in (
            ("output_throughput_ratio_ci95", "output throughput"),
            ("median_ttft_ratio_ci95", "median TTFT"),
        )
        if key in a
    ]
    if intervals:
        rounds = len(spread) if spread else "the"
        lines.append(
            f"95% intervals (block bootstrap over {rounds} rounds): " + "; ".join(intervals)
        )
    return "\n".join(lines)


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))


def plot(runs: list[dict[str, Any]], out_dir: Path, stem: str) -> list[Path]:
    """Latency distributions (CDFs of TTFT, TPOT, ITL, E2EL per target and concurrency) and
    throughput versus concurrency. Needs matplotlib (the ``bench`` extra); skipped without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'deepseek-serve[bench]'): no plots")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, metric in zip(axes.flat, LATENCY_METRICS, strict=True):
        for run in runs:
            values = _metric_values(run, metric)
            if not values:
                continue
            values.sort()
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot([v * 1000 for v in values], ys, label=_run_label(run))
        ax.set_title(f"{_NAMES[metric]} (CDF)")
        ax.set_xlabel("ms")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{stem}-latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    levels = sorted({r.get("max_concurrency") or 0 for r in runs})
    if len(levels) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label in dict.fromkeys(r["label"] for r in runs):
            mine = sorted(
                (r for r in runs if r["label"] == label),
                key=lambda r: r.get("max_concurrency") or 0,
            )
            xs = [r.get("max_concurrency") or 0 for r in mine]
            axes[0].plot(xs, [r["output_throughput"] for r in mine], marker="o", label=label)
            axes[1].plot(xs, [r["median_ttft_ms"] for r in mine], marker="o", label=label)
        axes[0].set_title("Output token throughput vs concurrency")
        axes[0].set_ylabel("tok/s")
        axes[1].set_title("Median TTFT vs concurrency")
        axes[1].set_ylabel("ms")
        for ax in axes:
            ax.set_xlabel("max concurrency")
            ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"{stem}-throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _metric_values(run: dict[str, Any], metric: str) -> list[float]:
    ok = [i for i, e in enumerate(run.get("errors", [])) if not e and run["output_lens"][i]]
    if metric == "ttft":
        return [run["ttfts"][i] for i in ok]
    if metric == "e2el":
        return [run["latencies"][i] for i in ok]
    if metric == "itl":
        return [x for i in ok for x in run["itls"][i]]
    return [
        (run["latencies"][i] - run["ttfts"][i]) / (run["output_lens"][i] - 1)
        for i in ok
        if run["output_lens"][i] > 1
    ]


def _run_label(run: dict[str, Any]) -> str:
    c = run.get("max_concurrency")
    return f"{run['label']} c={c}" if c else str(run["label"])


def markdown(
    runs: list[dict[str, Any]],
    comparisons: list[tuple[int | None, str]],
    plots: list[Path],
    command: str,
    environment: dict[str, str],
    percentiles: Sequence[float],
) -> str:
    lines = ["# Benchmark report", ""]
    lines += [f"- {k}: {v}" for k, v in environment.items()]
    lines += ["", "Command:", "", "```", command, "```", ""]
    keys = ["output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_tpot_ms", "median_itl_ms", "median_e2el_ms"]  # fmt: skip
    keys = [k for k in keys if all(k in r for r in runs)]
    lines.append("| target | concurrency | done/failed/cancelled | " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * (3 + len(keys)))
    for r in runs:
        cells = [f"{r[k]:.2f}" for k in keys]
        done = f"{r['completed']}/{r['failed']}/{r['cancelled']}"
        lines.append(
            f"| {r['label']} | {r.get('max_concurrency') or '-'} | {done} | "
            + " | ".join(cells) + " |"
        )  # fmt: skip
    for level, table in comparisons:
        lines += ["", f"## Comparison at concurrency {level or '-'}", "", "```", table, "```"]
    for p in plots:
        lines += ["", f"![{p.stem}]({p.name})"]
    return "\n".join(lines) + "\n"
