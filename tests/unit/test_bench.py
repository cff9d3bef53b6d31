"""The benchmark's metrics (against hand-computed values), arrivals, SSE parsing and workloads."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepseek_serve.bench import runner
from deepseek_serve.bench.cli import load_tokenizer
from deepseek_serve.bench.client import RequestOutput, SSEParser
from deepseek_serve.bench.metrics import compute_metrics, parse_goodput, round_ratio_intervals
from deepseek_serve.bench.report import compare_table, format_compare, summary
from deepseek_serve.bench.runner import LoadSpec, RunOutcome, Target, arrival_times, split_rounds
from deepseek_serve.bench.workloads import (
    CHAT,
    COMPLETIONS,
    FIM_BEGIN,
    BenchRequest,
    WorkloadSpec,
    build_workload,
)


def ok(ttft: float, latency: float, tokens: int, itl: list[float], prompt: int, start: float):
    return RequestOutput(
        success=True, ttft=ttft, latency=latency, output_tokens=tokens, itl=itl,
        prompt_len=prompt, start_time=start, status=200, got_first_token=True,
    )  # fmt: skip


@pytest.fixture
def outputs() -> list[RequestOutput]:
    return [
        ok(0.1, 0.5, 5, [0.1, 0.1, 0.1, 0.1], 10, 0.0),
        ok(0.2, 0.4, 3, [0.1, 0.1], 20, 0.5),
        RequestOutput(status=500, error="boom", prompt_len=7),
        RequestOutput(status=200, cancelled=True, ttft=0.05, prompt_len=9),
        RequestOutput(status=None, error="ClientConnectorError"),
    ]


def test_counts_and_throughput(outputs: list[RequestOutput]) -> None:
    r = compute_metrics(outputs, 2.0)
    assert (r["completed"], r["failed"], r["cancelled"]) == (2, 2, 1)
    assert r["failures_by_status"] == {"500": 1, "connection": 1}
    assert r["total_input_tokens"] == 30  # failed and cancelled requests do not count
    assert r["total_output_tokens"] == 8
    assert r["request_throughput"] == pytest.approx(1.0)
    assert r["output_throughput"] == pytest.approx(4.0)
    assert r["total_token_throughput"] == pytest.approx(19.0)
    assert r["request_goodput"] is None
    assert r["output_lens"] == [5, 3, 0, 0, 0]


def test_latency_statistics(outputs: list[RequestOutput]) -> None:
    r = compute_metrics(outputs, 2.0, percentiles=[90, 99.9])
    # TTFT 100 and 200 ms; numpy's linear percentile: 100 + 0.9 * 100
    assert r["mean_ttft_ms"] == pytest.approx(150)
    assert r["median_ttft_ms"] == pytest.approx(150)
    assert r["std_ttft_ms"] == pytest.approx(50)
    assert r["p90_ttft_ms"] == pytest.approx(190)
    assert r["p99.9_ttft_ms"] == pytest.approx(199.9)
    # TPOT: (500 - 100) / 4 and (400 - 200) / 2
    assert r["mean_tpot_ms"] == pytest.approx(100)
    assert r["median_tpot_ms"] == pytest.approx(100)
    # ITL pools the six gaps
    assert r["mean_itl_ms"] == pytest.approx(100)
    assert r["mean_e2el_ms"] == pytest.approx(450)
    assert r["p90_e2el_ms"] == pytest.approx(490)
    # tokens at 0.1..0.5 s and 0.7..0.9 s all fall in the first one-second bucket
    assert r["max_output_tokens_per_s"] == 8
    assert r["max_concurrent_requests"] == 2


def test_goodput_counts_requests_meeting_every_slo(outputs: list[RequestOutput]) -> None:
    assert compute_metrics(outputs, 2.0, goodput_slos={"ttft": 150})["request_goodput"] == 0.5
    both = {"ttft": 250, "e2el": 450}  # the second request meets both, the first's E2EL is 500
    assert compute_metrics(outputs, 2.0, goodput_slos=both)["request_goodput"] == 0.5
    assert compute_metrics(outputs, 2.0, goodput_slos={"tpot": 99})["request_goodput"] == 0.0


def test_one_token_request_has_no_tpot_but_counts_as_zero_for_goodput() -> None:
    outs = [ok(0.3, 0.3, 1, [], 4, 0.0), ok(0.1, 0.3, 3, [0.1, 0.1], 4, 0.0)]
    r = compute_metrics(outs, 1.0, goodput_slos={"tpot": 50})
    assert r["mean_tpot_ms"] == pytest.approx(100)  # only the 3-token request
    assert r["request_goodput"] == 1.0  # the 1-token one: TPOT 0 meets 50 ms


def test_empty_run_is_all_zero() -> None:
    r = compute_metrics([], 0.0)
    assert r["completed"] == 0 and r["output_throughput"] == 0.0
    assert r["median_ttft_ms"] == 0.0 and r["p99_e2el_ms"] == 0.0


def test_vllm_result_keys_present(outputs: list[RequestOutput]) -> None:
    keys = {
        "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
        "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
        "input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "errors",
        "generated_texts", "max_output_tokens_per_s", "max_concurrent_requests",
    }  # fmt: skip
    for m in ("ttft", "tpot", "itl", "e2el"):
        keys |= {f"mean_{m}_ms", f"median_{m}_ms", f"std_{m}_ms", f"p99_{m}_ms"}
    assert keys <= set(compute_metrics(outputs, 1.0, percentiles=[99]))


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:200", "tpot:50.5"]) == {"ttft": 200.0, "tpot": 50.5}
    for bad in (["ttft"], ["speed:3"], ["e2el:-1"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_summary_and_comparison_tables(outputs: list[RequestOutput]) -> None:
    a = compute_metrics(outputs, 2.0)
    b = compute_metrics(outputs, 4.0)
    text = summary(a, [90, 99])
    assert "Successful requests:" in text and "P99 TTFT (ms):" in text
    rows = {label: r for label, _, _, r in compare_table(a, b, ("a", "b"), [90, 99])}
    assert rows["Output token throughput (tok/s)"] == pytest.approx(2.0)
    assert rows["Median TTFT (ms)"] == pytest.approx(1.0)
    assert "a/b" in format_compare(a, b, ("a", "b"), [90, 99])
    a["round_output_throughput_ratios"] = [0.5, 0.5]
    a["output_throughput_ratio_ci95"] = [0.49, 0.52]
    assert (
        "95% intervals (block bootstrap over 2 rounds): output throughput a/b 0.490-0.520x"
        in format_compare(a, b, ("a", "b"), [90, 99])
    )


# --- arrivals ---


def test_arrivals_poisson_are_scaled_to_n_over_rate() -> None:
    times = arrival_times(50, 10.0, 1.0, np.random.default_rng(0))
    assert len(times) == 50
    assert times[-1] == pytest.approx(5.0)
    assert all(b >= a for a, b in itertools.pairwise(times))
    assert times == arrival_times(50, 10.0, 1.0, np.random.default_rng(0))
    assert times != arrival_times(50, 10.0, 1.0, np.random.default_rng(1))


def test_arrivals_burstiness() -> None:
    steady = arrival_times(20, 4.0, math.inf, np.random.default_rng(0))
    assert steady == pytest.approx([0.25 * (i + 1) for i in range(20)])
    assert arrival_times(5, math.inf, 1.0, np.random.default_rng(0)) == [0.0] * 5

    def spread(b: float) -> float:
        gaps = np.diff(arrival_times(4000, 10.0, b, np.random.default_rng(3)))
        return float(np.std(gaps) / np.mean(gaps))

    # Gamma gaps: coefficient of variation 1/sqrt(shape)
    assert spread(0.25) == pytest.approx(2.0, rel=0.15)
    assert spread(4.0) == pytest.approx(0.5, rel=0.15)
    with pytest.raises(ValueError):
        arrival_times(3, 1.0, 0.0, np.random.default_rng(0))


def test_split_rounds_keeps_sessions_whole() -> None:
    plain = [BenchRequest(COMPLETIONS, {}, 1, 1) for _ in range(10)]
    assert [len(r) for r in split_rounds(plain, 4)] == [3, 2, 3, 2]
    editor = [BenchRequest(COMPLETIONS, {}, 1, 1, session=i % 3) for i in range(9)]
    rounds = split_rounds(editor, 2)
    assert sum(len(r) for r in rounds) == 9
    for r in rounds:
        sessions = {x.session for x in r}
        assert all(sum(1 for x in r if x.session == s) == 3 for s in sessions)


# --- SSE ---


def test_sse_parser_handles_split_and_joined_events() -> None:
    p = SSEParser()
    assert p.feed(b'data: {"a":') == []
    assert p.feed(b' 1}\n\ndata: {"b": 2}\n\nda') == [b'{"a": 1}', b'{"b": 2}']
    assert p.feed(b"ta: [DONE]\r\n\r\n") == []  # CRLF events end with \r\n\r\n
    p2 = SSEParser()
    assert p2.feed(b": ping\n\ndata:[DONE]\n\n") == [b"[DONE]"]


# --- workloads ---


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer("deepseek-coder")


def test_random_prompts_have_the_asked_token_count(tokenizer: Any) -> None:
    spec = WorkloadSpec(name="random", num_prompts=8, input_len=64, output_len=16, seed=5)
    reqs = build_workload(spec, tokenizer)
    assert len(reqs) == 8
    for r in reqs:
        assert r.endpoint == COMPLETIONS and r.body["max_tokens"] == 16
        # BOS + 63 text tokens, re-encoded exactly
        assert len(tokenizer.encode(r.body["prompt"], add_special_tokens=True)) == 64
        assert r.prompt_len == 64
    again = build_workload(spec, tokenizer)
    assert [r.body for r in again] == [r.body for r in reqs]
    ranged = build_workload(
        WorkloadSpec(num_prompts=30, input_len=100, output_len=20, range_ratio=0.5), tokenizer
    )
    outs = {r.output_len for r in ranged}
    assert min(outs) >= 10 and max(outs) <= 30 and len(outs) > 3


def test_fim_prompts_carry_repository_context(tokenizer: Any) -> None:
    reqs = build_workload(WorkloadSpec(name="fim", num_prompts=4, input_len=400), tokenizer)
    for r in reqs:
        prompt = r.body["prompt"]
        assert prompt.startswith(FIM_BEGIN) and "#deepseek_serve/" in prompt
        assert 200 < r.prompt_len <= 420
    raw = build_workload(
        WorkloadSpec(name="fim", num_prompts=2, input_len=200, fim_suffix=True), tokenizer
    )
    assert all("suffix" in r.body and FIM_BEGIN not in r.body["prompt"] for r in raw)


def test_editor_trace_types_through_one_file_per_session(tokenizer: Any) -> None:
    spec = WorkloadSpec(name="editor", num_prompts=12, input_len=200, sessions=3, seed=1)
    reqs = build_workload(spec, tokenizer)
    assert sorted({r.session for r in reqs}) == [0, 1, 2]
    for s in range(3):
        mine = [r for r in reqs if r.session == s]
        assert len(mine) == 4
        assert [r.at for r in mine] == sorted(r.at for r in mine) and mine[0].at == 0.0
        # the cursor moves on: consecutive prompts differ
        assert len({r.body["prompt"] for r in mine}) == 4


def test_chat_and_jsonl(tokenizer: Any, tmp_path: Any) -> None:
    chats = build_workload(WorkloadSpec(name="chat", num_prompts=3, input_len=300), tokenizer)
    for r in chats:
        assert r.endpoint == CHAT
        roles = [m["role"] for m in r.body["messages"]]
        assert roles == ["user", "assistant", "user"]
    path = tmp_path / "reqs.jsonl"
    path.write_text(
        '{"prompt": "def f(", "max_tokens": 5, "stream": false}\n\n'
        '{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7}\n'
    )
    reqs = build_workload(WorkloadSpec(name="jsonl", jsonl_path=path), tokenizer)
    assert [(r.endpoint, r.output_len) for r in reqs] == [(COMPLETIONS, 5), (CHAT, 7)]
    assert "stream" not in reqs[0].body
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"reqs\.jsonl:1"):
        build_workload(WorkloadSpec(name="jsonl", jsonl_path=path), tokenizer)


def test_server_cpu_per_output_token() -> None:
    from deepseek_serve.bench.cli import cpu_metrics

    m = cpu_metrics((0.5, 2.0), {"total_output_tokens": 1000})
    assert m["server_api_cpu_s"] == 0.5 and m["server_engine_cpu_s"] == 2.0
    assert m["server_api_cpu_us_per_output_token"] == pytest.approx(500.0)
    assert m["server_total_cpu_us_per_output_token"] == pytest.approx(2500.0)


def test_compare_alternates_turns_and_settles_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns go AB, BA, AB...; ``settle`` passes before each turn and is in nobody's duration."""
    import asyncio
    import time

    turns: list[tuple[str, float]] = []

    async def fake_run_once(session: Any, target: Target, chunk: Any, *_: Any) -> RunOutcome:
        turns.append((target.label, time.monotonic()))
        done = RequestOutput(success=True, output_tokens=10, latency=0.01)
        return RunOutcome([done] * len(chunk), duration=0.01)

    monkeypatch.setattr(runner, "run_once", fake_run_once)
    targets = [Target("a", "http://a", "m"), Target("b", "http://b", "m")]
    requests = [BenchRequest("/v1/completions", {}, 4, 10) for _ in range(6)]
    outcome = asyncio.run(
        runner.run_compare(None, targets, requests, LoadSpec(), rounds=3, settle=0.05)  # type: ignore[arg-type]
    )
    assert [label for label, _ in turns] == ["a", "b", "b", "a", "a", "b"]
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(turns)]
    assert min(gaps) >= 0.05
    assert [o.duration for o in outcome.per_target] == pytest.approx([0.03, 0.03])
    assert outcome.round_output_tokens == [[20, 20, 20], [20, 20, 20]]
    assert outcome.round_ttfts == [[[0.0, 0.0]] * 3, [[0.0, 0.0]] * 3]


def test_round_intervals_separate_a_real_difference_from_noise() -> None:
    rng = np.random.default_rng(1)
    rounds = 16
    machine = rng.uniform(0.7, 1.5, rounds)  # the host's speed drifts from round to round
    # A does the same work in 0.9x of B's time, in every round, whatever the host's speed:
    dur_b = 10.0 / machine
    dur_a = 0.9 * dur_b
    ttft_b = [list(0.1 / m * rng.uniform(0.8, 1.2, 20)) for m in machine]
    ttft_a = [[0.8 * t for t in r] for r in ttft_b]
    ci = round_ratio_intervals([[640] * rounds] * 2, [dur_a, dur_b], [ttft_a, ttft_b])
    assert ci["output_throughput"] == pytest.approx((1 / 0.9, 1 / 0.9))
    assert ci["median_ttft"] == pytest.approx((0.8, 0.8))

    # Same server twice, each turn with its own noise: the intervals hold 1.0 and are wide.
    same_a = 10.0 / machine * rng.uniform(0.7, 1.4, rounds)
    same_b = 10.0 / machine * rng.uniform(0.7, 1.4, rounds)
    noisy_a = [list(0.1 * rng.uniform(0.5, 2.0, 20)) for _ in machine]
    noisy_b = [list(0.1 * rng.uniform(0.5, 2.0, 20)) for _ in machine]
    ci = round_ratio_intervals([[640] * rounds] * 2, [same_a, same_b], [noisy_a, noisy_b])
    for lo, hi in ci.values():
        assert lo < 1.0 < hi and hi - lo > 0.1


def test_round_intervals_need_two_targets_and_two_rounds() -> None:
    assert round_ratio_intervals([[64], [64]], [[1.0], [1.0]], [[[0.1]], [[0.1]]]) == {}
    assert round_ratio_intervals([[64, 64]], [[1.0, 1.0]], [[[0.1], [0.1]]]) == {}
    # No successful request in B: no ratio to bound.
    none_in_b = round_ratio_intervals(
        [[64, 64], [0, 0]], [[1.0, 1.0], [1.0, 1.0]], [[[0.1]] * 2, [[], []]]
    )
    assert none_in_b == {}


def test_waste_figures_come_from_the_targets_engine_counters() -> None:
    from deepseek_serve.bench.client import ENGINE_COUNTERS, waste_metrics

    abandoned, generated = ENGINE_COUNTERS
    result = {"cancelled": 30, "num_prompts": 120}
    before = {abandoned: 10.0, generated: 1000.0}
    after = {abandoned: 30.0, generated: 1380.0}
    got = waste_metrics(before, after, result)
    assert got == {
        "cancelled_request_share": 0.25,
        "abandoned_tokens": 20.0,
        "abandoned_token_share": 20 / 400,
    }
    # vLLM's own server has no such counter: only the cancelled share is reported
    assert waste_metrics({}, {generated: 5.0}, result) == {"cancelled_request_share": 0.25}


def test_api_processes_count_on_the_api_side_of_server_cpu() -> None:
    """With several API processes (ours or vLLM's) their CPU is API CPU, not engine CPU."""
    from deepseek_serve.bench.servers import is_api_process

    class Proc:
        def __init__(self, name: str, cmdline: list[str]) -> None:
            self._name, self._cmdline = name, cmdline

        def name(self) -> str:
            return self._name

        def cmdline(self) -> list[str]:
            return self._cmdline

    assert is_api_process(Proc("deepseek_serve:", ["deepseek_serve::api 1"]))
    assert is_api_process(Proc("VLLM::APIServer", ["VLLM::APIServer_0"]))
    for engine in ("VLLM::EngineCore", "VLLM::Worker", "deepseek_serve::EngineGuardian"):
        assert not is_api_process(Proc(engine[:15], [engine])), engine


def test_instant_n_starts_n_processes_of_the_instant_server(tmp_path: Path) -> None:
    from deepseek_serve.bench.servers import ServerOptions, command, startable

    assert startable("instant") and startable("instant:2") and startable("ours")
    assert not startable("instant:0") and not startable("starlette:2") and not startable("x:2")
    cmd = command("instant:3", 9999, ServerOptions(log_dir=tmp_path))
    assert cmd[cmd.index("--processes") + 1] == "3" and "instant" in cmd
    assert "--processes" not in command("instant", 9999, ServerOptions(log_dir=tmp_path))
