"""``deepseek-serve bench``: benchmark OpenAI-compatible servers the way ``vllm bench serve`` does.

Examples::

    deepseek-serve bench --base-url http://127.0.0.1:8000 --dataset-name random \\
        --random-input-len 256 --random-output-len 64 --num-prompts 200 --max-concurrency 8
    deepseek-serve bench --start-server --dataset-name editor --num-prompts 100 --sessions 4
    deepseek-serve bench --compare ours vllm --max-concurrency 1,8,32 --ignore-eos --save-result
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deepseek_serve.bench.metrics import compute_metrics, parse_goodput, round_ratio_intervals
from deepseek_serve.bench.report import format_compare, markdown, plot, save_json, summary
from deepseek_serve.bench.servers import (
    STARTABLE,
    VLLM_CPU_ARGS,
    RunningServer,
    ServerOptions,
    start,
    startable,
    wait_ready,
)
from deepseek_serve.bench.workloads import (
    CHAT,
    WORKLOADS,
    BenchRequest,
    WorkloadSpec,
    build_workload,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepseek-serve bench",
        description="Benchmark an OpenAI-compatible server (metrics and JSON keys as in "
        "'vllm bench serve'), or compare two in one interleaved run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t = p.add_argument_group("targets")
    t.add_argument("--base-url", help="Server to benchmark, e.g. http://127.0.0.1:8000.")
    t.add_argument(
        "--start-server",
        action="store_true",
        help="Start deepseek-serve (target 'ours') instead of using --base-url.",
    )
    t.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help=f"Two targets, run interleaved; each a URL or one of {', '.join(STARTABLE)} "
        "(started here; instant:N is N processes of instant on one port). Ratios are A/B.",
    )
    t.add_argument("--model", help="Model name to send (default: the target's first model).")
    t.add_argument("--label", help="Label of a single target in results (default: its URL).")
    w = p.add_argument_group("workload")
    w.add_argument(
        "--dataset-name", "--workload", dest="dataset_name", default="random", choices=WORKLOADS
    )
    w.add_argument("--dataset-path", type=Path, help="JSONL file of request bodies (jsonl).")
    w.add_argument(
        "--repo-dir", type=Path, help="Source tree for chat/fim/editor (default: this package's)."
    )
    w.add_argument(
        "--num-prompts",
        default="100",
        help="Requests per run; a comma list gives one per concurrency level.",
    )
    w.add_argument("--random-input-len", "--input-len", dest="input_len", type=int, default=1024)
    w.add_argument("--random-output-len", "--output-len", dest="output_len", type=int, default=128)
    w.add_argument("--random-range-ratio", dest="range_ratio", type=float, default=0.0)
    w.add_argument("--random-prefix-len", dest="prefix_len", type=int, default=0)
    w.add_argument(
        "--tokenizer",
        default="deepseek-coder",
        help="deepseek-coder, deepseek-coder-v2 or a tokenizer directory.",
    )
    w.add_argument(
        "--fim-suffix",
        action="store_true",
        help="Send FIM as prompt+suffix (server renders) instead of raw FIM tokens.",
    )
    w.add_argument("--chat-turns", type=int, default=2)
    w.add_argument(
        "--sessions",
        type=int,
        help="Editor sessions typing at once (default: --max-concurrency or 1).",
    )
    w.add_argument("--keystroke-ms", type=float, default=120.0)
    w.add_argument("--pause-ms", type=float, default=800.0)
    w.add_argument("--ignore-eos", action="store_true", help="Send vLLM's ignore_eos extension.")
    w.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into bodies.")
    a = p.add_argument_group("arrivals")
    a.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="Requests per second (inf: all at once, capped by --max-concurrency).",
    )
    a.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="Gamma shape of the gaps: 1 Poisson, <1 burstier, >1 steadier.",
    )
    a.add_argument(
        "--max-concurrency",
        default=None,
        help="Most requests in flight; a comma list runs one level after another.",
    )
    a.add_argument("--num-warmups", type=int, default=0, help="Warm-up requests per run.")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--rounds", type=int, default=4, help="--compare: alternating rounds per concurrency level."
    )
    a.add_argument(
        "--settle",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="--compare: pause before every turn, counted for no one, so that the server that "
        "just ran has gone quiet (vLLM's CPU worker spins for 1 s after its last step).",
    )
    m = p.add_argument_group("metrics and output")
    m.add_argument("--metric-percentiles", default="90,99")
    m.add_argument(
        "--goodput",
        nargs="+",
        default=[],
        metavar="METRIC:MS",
        help="SLOs for goodput, e.g. ttft:200 tpot:50 e2el:2000.",
    )
    m.add_argument("--save-result", action="store_true", help="Write JSON, plots and report.md.")
    m.add_argument("--result-dir", type=Path, default=Path("bench-results"))
    m.add_argument("--result-filename", help="JSON file name of a single run.")
    m.add_argument("--no-plots", action="store_true")
    m.add_argument(
        "--save-detailed",
        action="store_true",
        help="Keep per-request lists (ttfts, itls, texts ...) in the JSON.",
    )
    m.add_argument("--disable-tqdm", action="store_true")
    s = p.add_argument_group("servers started here")
    s.add_argument(
        "--server-model",
        default="demo",
        help="Checkpoint the started servers serve (demo: the tiny local one).",
    )
    s.add_argument("--served-model-name", default="demo")
    s.add_argument("--ours-config", help="deepseek-serve --config (default: configs/cpu.yaml).")
    s.add_argument("--ours-args", default="", help="More deepseek-serve flags (one string).")
    s.add_argument(
        "--vllm-args",
        default=VLLM_CPU_ARGS,
        help="vLLM api_server flags besides --model/--port (one string).",
    )
    s.add_argument(
        "--pin",
        nargs="+",
        default=[],
        metavar="NAME=CPUS",
        help="taskset a started server, e.g. ours=0 vllm=1.",
    )
    return p


def _ints(text: str | None) -> list[int | None]:
    if text is None:
        return [None]
    return [int(x) for x in str(text).split(",") if x.strip()]


def load_tokenizer(name: str) -> Any:
    from deepseek_serve.demo import packaged_tokenizer_dir
    from deepseek_serve.prompts.tokenizer import load_hf_tokenizer

    path = Path(name)
    if not path.is_dir():
        path = packaged_tokenizer_dir(name)
    return load_hf_tokenizer(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    specs: list[str]
    if args.compare:
        specs = list(args.compare)
    elif args.start_server:
        specs = ["ours"]
    elif args.base_url:
        specs = [args.base_url]
    else:
        raise SystemExit("deepseek-serve bench: give --base-url, --start-server or --compare A B")
    percentiles = [float(x) for x in args.metric_percentiles.split(",") if x.strip()]
    try:
        slos = parse_goodput(args.goodput)
    except ValueError as exc:
        raise SystemExit(f"deepseek-serve bench: {exc}") from None
    levels = _ints(args.max_concurrency)
    counts = [int(x) for x in args.num_prompts.split(",")]
    if len(counts) not in (1, len(levels)):
        raise SystemExit("deepseek-serve bench: --num-prompts needs one value or one per level")
    counts = counts * len(levels) if len(counts) == 1 else counts

    tokenizer = load_tokenizer(args.tokenizer)
    workloads = []
    for level, count in zip(levels, counts, strict=True):
        spec = WorkloadSpec(
            name=args.dataset_name,
            num_prompts=count,
            input_len=args.input_len,
            output_len=args.output_len,
            range_ratio=args.range_ratio,
            prefix_len=args.prefix_len,
            seed=args.seed,
            repo_dir=args.repo_dir,
            fim_suffix=args.fim_suffix,
            chat_turns=args.chat_turns,
            sessions=args.sessions or level or 1,
            keystroke_ms=args.keystroke_ms,
            pause_ms=args.pause_ms,
            jsonl_path=args.dataset_path,
        )
        warm_spec = dataclasses.replace(spec, num_prompts=args.num_warmups, seed=args.seed + 1)
        warm = build_workload(warm_spec, tokenizer) if args.num_warmups else []
        workloads.append((level, build_workload(spec, tokenizer), warm))

    pins = dict(item.split("=", 1) for item in args.pin)
    opts = ServerOptions(
        model=args.server_model,
        served_name=args.served_model_name,
        ours_config=args.ours_config,
        ours_args=args.ours_args,
        vllm_args=args.vllm_args,
        cpus=pins,
        log_dir=args.result_dir / "logs",
    )
    started: list[RunningServer] = []
    _stop_on_sigterm()
    try:
        urls: list[tuple[str, str, str | None, RunningServer | None]] = []
        for spec_name in specs:
            if startable(spec_name):
                server = start(spec_name, opts)
                started.append(server)
                urls.append((spec_name, server.base_url, args.served_model_name, server))
            else:
                urls.append((args.label or spec_name, spec_name, args.model, None))
        for server in started:
            wait_ready(server, opts.start_timeout)
        runs, comparisons = asyncio.run(_run_all(args, urls, workloads, percentiles, slos))
    finally:
        for server in started:
            server.stop()
    _output(args, runs, comparisons, percentiles, argv)
    return 0


async def _run_all(
    args: argparse.Namespace,
    urls: list[tuple[str, str, str | None, RunningServer | None]],
    workloads: list[tuple[int | None, list[BenchRequest], list[BenchRequest]]],
    percentiles: list[float],
    slos: dict[str, float],
) -> tuple[list[dict[str, Any]], list[tuple[int | None, str]]]:
    from tqdm import tqdm

    from deepseek_serve.bench.client import (
        engine_counters,
        first_model,
        new_session,
        waste_metrics,
    )
    from deepseek_serve.bench.runner import LoadSpec, Target, run_compare, run_once, warm_up

    biggest = max((lvl or len(reqs)) for lvl, reqs, _ in workloads)
    runs: list[dict[str, Any]] = []
    comparisons: list[tuple[int | None, str]] = []
    async with new_session(max(biggest, 1) + 8) as session:
        targets = []
        meters = []
        for label, url, name, server in urls:
            model = name or await first_model(session, url)
            targets.append(Target(label, url, model))
            meters.append(server.cpu_seconds if server else None)
        for level, requests, warm in workloads:
            load = LoadSpec(
                request_rate=args.request_rate,
                burstiness=args.burstiness,
                max_concurrency=level,
                ignore_eos=args.ignore_eos,
                extra_body=args.extra_body,
                seed=args.seed,
            )
            for target in targets:
                if warm:
                    await warm_up(session, target, warm, load)
            counters = [await engine_counters(session, t.base_url) for t in targets]
            total = len(requests) * len(targets)
            bar = tqdm(total=total, disable=args.disable_tqdm, desc=f"concurrency {level or '-'}")
            if len(targets) == 1:
                outcome = await run_once(session, targets[0], requests, load, bar.update, meters[0])
                outcomes = [outcome]
                ratios: list[float] = []
                intervals: dict[str, tuple[float, float]] = {}
                per_round: list[dict[str, Any]] = [{}]
            else:
                cmp = await run_compare(
                    session,
                    targets,
                    requests,
                    load,
                    args.rounds,
                    bar.update,
                    meters,
                    settle=args.settle,
                )
                outcomes = cmp.per_target
                thr = [
                    [tok / dur if dur else 0.0 for tok, dur in zip(tk, du, strict=True)]
                    for tk, du in zip(cmp.round_output_tokens, cmp.round_durations, strict=True)
                ]
                ratios = [x / y if y else 0.0 for x, y in zip(thr[0], thr[1], strict=True)]
                per_round = [
                    {"round_durations": du, "round_output_tokens": tk}
                    for du, tk in zip(cmp.round_durations, cmp.round_output_tokens, strict=True)
                ]
                intervals = round_ratio_intervals(
                    cmp.round_output_tokens, cmp.round_durations, cmp.round_ttfts, seed=args.seed
                )
            bar.close()
            level_runs = []
            for target, outcome, rounds, before in zip(
                targets, outcomes, per_round, counters, strict=True
            ):
                result = compute_metrics(
                    outcome.outputs,
                    outcome.duration,
                    percentiles=percentiles,
                    goodput_slos=slos,
                    include_details=True,
                )
                result.update(_run_info(args, target, requests, level))
                if outcome.cpu is not None:
                    result.update(cpu_metrics(outcome.cpu, result))
                after = await engine_counters(session, target.base_url)
                result.update(waste_metrics(before, after, result))
                result.update(rounds)  # each turn's duration and tokens, in round order
                if ratios and target is targets[0]:
                    result["round_output_throughput_ratios"] = ratios
                    for name, bounds in intervals.items():
                        result[f"{name}_ratio_ci95"] = list(bounds)
                level_runs.append(result)
                print(summary(result, percentiles, f"[{target.label} c={level or '-'}]"))
            if len(targets) == 2:
                table = format_compare(
                    level_runs[0], level_runs[1], (targets[0].label, targets[1].label), percentiles
                )
                print(
                    f"\nInterleaved comparison, concurrency {level or '-'} ({args.rounds} rounds)"
                )
                print(table + "\n")
                comparisons.append((level, table))
            runs.extend(level_runs)
    return runs, comparisons


def _stop_on_sigterm() -> None:
    """SIGTERM (a job runner's stop, ``kill``) ends the run like Ctrl-C does: through the
    ``finally`` that stops the servers started here. Python's default would exit at once and
    leave them running in their own process groups."""
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, stop)


def cpu_metrics(cpu: tuple[float, float], result: dict[str, Any]) -> dict[str, float]:
    """Server CPU time over the run (only for servers started here), in total and per output
    token: how much work each server spends, whatever else the machine was doing."""
    tokens = max(1, int(result["total_output_tokens"]))
    return {
        "server_api_cpu_s": cpu[0],
        "server_engine_cpu_s": cpu[1],
        "server_api_cpu_us_per_output_token": cpu[0] / tokens * 1e6,
        "server_total_cpu_us_per_output_token": (cpu[0] + cpu[1]) / tokens * 1e6,
    }


def _run_info(
    args: argparse.Namespace, target: Any, requests: list[BenchRequest], level: int | None
) -> dict[str, Any]:
    chat = bool(requests) and requests[0].endpoint == CHAT
    return {
        "date": datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai-chat" if chat else "openai",
        "backend": "openai-chat" if chat else "openai",
        "label": target.label,
        "base_url": target.base_url,
        "model_id": target.model,
        "tokenizer_id": args.tokenizer,
        "dataset_name": args.dataset_name,
        "num_prompts": len(requests),
        "request_rate": args.request_rate if args.request_rate < float("inf") else "inf",
        "burstiness": args.burstiness,
        "max_concurrency": level,
    }


def _output(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    comparisons: list[tuple[int | None, str]],
    percentiles: list[float],
    argv: Sequence[str] | None,
) -> None:
    if not args.save_result:
        return
    out = args.result_dir
    stamp = runs[0]["date"] if runs else "run"
    command = "deepseek-serve bench " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    plots = [] if args.no_plots else plot(runs, out, f"{args.dataset_name}-{stamp}")
    detail_keys = (
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "latencies",
        "start_times",
        "queue_times",
        "generated_texts",
        "errors",
    )
    for run in runs:
        data = dict(run)
        if not args.save_detailed:
            for key in detail_keys:
                data.pop(key, None)
        name = args.result_filename if len(runs) == 1 and args.result_filename else None
        label = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(run["label"]))
        name = (
            name or f"{label}-{args.dataset_name}-concurrency{run['max_concurrency']}-{stamp}.json"
        )
        save_json(out / name, data)
    env = {
        "date (UTC)": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {_cpu_model()}, "
        f"{_cpu_count()} CPUs, Python {platform.python_version()}",
    }
    report = markdown(runs, comparisons, plots, command, env, percentiles)
    (out / f"report-{args.dataset_name}-{stamp}.md").write_text(report)
    print(f"results written to {out}/")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
