"""``deepseek-serve bench`` against the real server: short runs, checked for shape and sane counts
(never for speed)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, LiveServer


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "deepseek_serve", "bench", "--disable-tqdm", "--no-plots", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_random_workload_result_has_vllm_keys_and_server_counts(
    server: LiveServer, tmp_path: Path
) -> None:
    proc = bench(
        "--base-url", server.base_url, "--dataset-name", "random", "--num-prompts", "6",
        "--random-input-len", "48", "--random-output-len", "8", "--ignore-eos",
        "--max-concurrency", "3", "--num-warmups", "1", "--goodput", "ttft:60000",
        "--save-result", "--save-detailed", "--result-dir", str(tmp_path),
        "--result-filename", "run.json",
    )  # fmt: skip
    assert "Serving Benchmark Result" in proc.stdout
    r = load(tmp_path / "run.json")
    assert r["model_id"] == "tiny-coder"  # asked from /v1/models
    assert (r["completed"], r["failed"], r["cancelled"]) == (6, 0, 0)
    assert r["total_output_tokens"] == 6 * 8  # from the server's usage, ignore_eos honoured
    assert r["output_lens"] == [8] * 6
    assert r["input_lens"] == [48] * 6  # the server's prompt_tokens: BOS + 47
    assert r["total_input_tokens"] == 6 * 48
    assert r["request_goodput"] == pytest.approx(r["request_throughput"])
    # vLLM counts requests active within each one-second bucket, not at one instant
    assert r["max_concurrency"] == 3 and r["max_concurrent_requests"] >= 1
    for m in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p99"):
            assert r[f"{stat}_{m}_ms"] >= 0
    assert 0 < r["median_ttft_ms"] <= r["median_e2el_ms"]
    # one gap per token chunk after the first; a lagging stream may carry two tokens in a chunk
    assert all(0 < len(itl) + 1 <= 8 for itl in r["itls"])
    assert r["output_throughput"] == pytest.approx(48 / r["duration"])
    assert list(tmp_path.glob("report-random-*.md"))


def test_editor_trace_cancels_and_the_engine_lets_go(server: LiveServer, tmp_path: Path) -> None:
    # Keystrokes every ~20 ms against 400-token completions: all but each session's last request
    # are cancelled by the next keystroke, and the server must abort them in the engine.
    bench(
        "--base-url", server.base_url, "--dataset-name", "editor", "--num-prompts", "8",
        "--sessions", "2", "--keystroke-ms", "20", "--pause-ms", "0", "--random-input-len", "256",
        "--random-output-len", "400", "--ignore-eos", "--save-result", "--save-detailed",
        "--result-dir", str(tmp_path), "--result-filename", "editor.json",
    )  # fmt: skip
    r = load(tmp_path / "editor.json")
    assert r["failed"] == 0, r["errors"]
    assert r["completed"] + r["cancelled"] == 8
    assert r["completed"] == 2 and r["cancelled"] == 6
    assert r["output_lens"].count(400) == 2
    server.wait_engine_idle(timeout=10)


def test_chat_and_fim_workloads(server: LiveServer, tmp_path: Path) -> None:
    for name in ("chat", "fim"):
        extra = ["--fim-suffix"] if name == "fim" else []
        bench(
            "--base-url", server.base_url, "--dataset-name", name, "--num-prompts", "3",
            "--random-input-len", "200", "--random-output-len", "4", "--ignore-eos",
            "--save-result", "--result-dir", str(tmp_path), "--result-filename", f"{name}.json",
            *extra,
        )  # fmt: skip
        r = load(tmp_path / f"{name}.json")
        assert (r["completed"], r["failed"], r["total_output_tokens"]) == (3, 0, 12), name
        assert r["backend"] == ("openai-chat" if name == "chat" else "openai")
        assert r["total_input_tokens"] > 3 * 100


def test_compare_reports_ratios_with_round_intervals(server: LiveServer, tmp_path: Path) -> None:
    """``--compare`` of the server with itself (two spellings of its URL): the ratio table, the
    per-round ratios and the bootstrap intervals, which must hold the pooled ratio."""
    a, b = server.base_url, server.base_url + "/"
    proc = bench(
        "--compare", a, b, "--dataset-name", "random", "--num-prompts", "8",
        "--random-input-len", "32", "--random-output-len", "4", "--ignore-eos",
        "--max-concurrency", "2", "--rounds", "4", "--settle", "0",
        "--save-result", "--result-dir", str(tmp_path),
    )  # fmt: skip
    assert "Interleaved comparison, concurrency 2 (4 rounds)" in proc.stdout
    assert "95% intervals (block bootstrap over 4 rounds)" in proc.stdout
    results = [load(p) for p in sorted(tmp_path.glob("*concurrency2-*.json"))]
    first = next(r for r in results if r["base_url"] == a)
    second = next(r for r in results if r["base_url"] == b)
    assert first["completed"] == second["completed"] == 8
    assert len(first["round_output_throughput_ratios"]) == 4
    for r in (first, second):
        assert len(r["round_durations"]) == 4 and sum(r["round_output_tokens"]) == 8 * 4
        assert sum(r["round_durations"]) == pytest.approx(r["duration"])
    ratio = first["output_throughput"] / second["output_throughput"]
    lo, hi = first["output_throughput_ratio_ci95"]
    assert 0 < lo <= ratio <= hi
    lo, hi = first["median_ttft_ratio_ci95"]
    assert 0 < lo <= hi
    assert "round_output_throughput_ratios" not in second


def test_sigterm_stops_the_servers_the_benchmark_started(tmp_path: Path) -> None:
    """A benchmark stopped with SIGTERM (a job runner's stop) takes the servers it started down
    with it, as Ctrl-C does; they run in their own process groups, so nothing else would."""
    import signal
    import time

    import psutil

    cmd = [
        sys.executable, "-m", "deepseek_serve", "bench", "--disable-tqdm", "--no-plots",
        "--compare", "instant", "starlette", "--dataset-name", "random", "--num-prompts", "400",
        "--random-input-len", "16", "--random-output-len", "4", "--request-rate", "2",
        "--result-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        bench_process = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        servers: list[psutil.Process] = []
        while len(servers) < 2:  # both servers listening: the run is under way
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the servers did not start"
            time.sleep(0.5)
            servers = []
            for child in bench_process.children():
                with contextlib.suppress(psutil.Error):
                    if any(c.status == psutil.CONN_LISTEN for c in child.net_connections()):
                        servers.append(child)
        everything = servers + [p for s in servers for p in s.children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(everything, timeout=30)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
