"""Sending a workload: arrivals (Poisson or Gamma gaps, or as fast as a concurrency cap allows),
editor sessions with cancellation, warm-up, and interleaved rounds for comparing two targets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from deepseek_serve.bench.client import RequestOutput, send
from deepseek_serve.bench.workloads import BenchRequest


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    base_url: str
    model: str


@dataclass(frozen=True, slots=True)
class LoadSpec:
    request_rate: float = float("inf")
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


CpuMeter = Callable[[], tuple[float, float]]


@dataclass(slots=True)
class RunOutcome:
    outputs: list[RequestOutput]
    duration: float
    cpu: tuple[float, float] | None = None  # server CPU seconds (API process, engine processes)


def arrival_times(n: int, rate: float, burstiness: float, rng: np.random.Generator) -> list[float]:
    """Send times (s from the start) of ``n`` requests: Gamma gaps of mean ``1/rate`` and shape
    ``burstiness`` (1 is Poisson; lower is burstier), scaled so the last is at ``n/rate`` as vLLM
    does to steady the throughput across seeds. An infinite rate sends everything at once."""
    if burstiness <= 0:
        raise ValueError("burstiness must be positive")
    if n == 0 or rate == float("inf"):
        return [0.0] * n
    if burstiness == float("inf"):
        gaps = np.full(n, 1.0 / rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    if times[-1] > 0:
        times *= (n / rate) / times[-1]
    return [float(t) for t in times]


Progress = Callable[[], None]


async def _timed(
    session: aiohttp.ClientSession,
    target: Target,
    req: BenchRequest,
    load: LoadSpec,
    out: RequestOutput,
) -> RequestOutput:
    return await send(
        session,
        target.base_url,
        req,
        target.model,
        ignore_eos=load.ignore_eos,
        extra_body=load.extra_body,
        output=out,
    )


async def _session(
    session: aiohttp.ClientSession,
    target: Target,
    reqs: Sequence[BenchRequest],
    load: LoadSpec,
    results: list[RequestOutput],
    progress: Progress | None,
) -> None:
    """One editor: a request per keystroke; the next keystroke cancels an unfinished one."""
    start = time.perf_counter()
    pending: tuple[asyncio.Task[RequestOutput], RequestOutput] | None = None
    for req in reqs:
        delay = start + req.at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if pending is not None:
            await _cancel(*pending)
            if progress:
                progress()
        out = RequestOutput()
        results.append(out)
        pending = (asyncio.create_task(_timed(session, target, req, load, out)), out)
    if pending is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await pending[0]
        if progress:
            progress()


async def _cancel(task: asyncio.Task[RequestOutput], out: RequestOutput) -> None:
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    out.cancelled = True


async def run_once(
    session: aiohttp.ClientSession,
    target: Target,
    requests: Sequence[BenchRequest],
    load: LoadSpec,
    progress: Progress | None = None,
    meter: CpuMeter | None = None,
) -> RunOutcome:
    """Send ``requests`` to ``target``; the duration runs from the first send to the last answer.
    ``meter`` (a started server's CPU clock) measures the server's CPU time over the run."""
    before = meter() if meter else None
    outcome = await _run_once(session, target, requests, load, progress)
    if meter and before:
        after = meter()
        outcome.cpu = (after[0] - before[0], after[1] - before[1])
    return outcome


async def _run_once(
    session: aiohttp.ClientSession,
    target: Target,
    requests: Sequence[BenchRequest],
    load: LoadSpec,
    progress: Progress | None,
) -> RunOutcome:
    sessions: dict[int, list[BenchRequest]] = {}
    plain: list[BenchRequest] = []
    for r in requests:
        if r.session is None:
            plain.append(r)
        else:
            sessions.setdefault(r.session, []).append(r)
    start = time.perf_counter()
    results: list[RequestOutput] = []
    editor_results: list[RequestOutput] = []
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(_session(session, target, reqs, load, editor_results, progress))
        for reqs in sessions.values()
    ]
    if plain:
        rng = np.random.default_rng(load.seed)
        times = arrival_times(len(plain), load.request_rate, load.burstiness, rng)
        gate = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None

        async def one(req: BenchRequest, out: RequestOutput) -> None:
            queued = time.perf_counter()
            if gate is None:
                await _timed(session, target, req, load, out)
            else:
                async with gate:
                    out.client_queue_time = time.perf_counter() - queued
                    await _timed(session, target, req, load, out)
            if progress:
                progress()

        for req, at in zip(plain, times, strict=True):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out = RequestOutput()
            results.append(out)
            tasks.append(asyncio.create_task(one(req, out)))
    await asyncio.gather(*tasks)
    return RunOutcome(results + editor_results, time.perf_counter() - start)


async def warm_up(
    session: aiohttp.ClientSession,
    target: Target,
    requests: Sequence[BenchRequest],
    load: LoadSpec,
) -> None:
    """Requests whose results are thrown away (connections, caches and the engine warm up)."""
    plain = [BenchRequest(r.endpoint, r.body, r.prompt_len, r.output_len) for r in requests]
    cap = LoadSpec(max_concurrency=load.max_concurrency or len(plain) or 1,
                   ignore_eos=load.ignore_eos, extra_body=load.extra_body)  # fmt: skip
    await run_once(session, target, plain, cap)


def split_rounds(requests: Sequence[BenchRequest], rounds: int) -> list[list[BenchRequest]]:
    """Round slices of the workload; an editor session stays whole within one round."""
    rounds = max(1, min(rounds, len(requests)))
    groups: list[list[BenchRequest]] = []
    by_session: dict[int, list[BenchRequest]] = {}
    for r in requests:
        if r.session is None:
            groups.append([r])
        else:
            if r.session not in by_session:
                by_session[r.session] = []
                groups.append(by_session[r.session])
            by_session[r.session].append(r)
    rounds = min(rounds, len(groups))
    out: list[list[BenchRequest]] = [[] for _ in range(rounds)]
    for i, group in enumerate(groups):
        out[i * rounds // len(groups)].extend(group)
    return out


@dataclass(slots=True)
class CompareOutcome:
    per_target: list[RunOutcome]
    round_durations: list[list[float]]  # [target][round]
    round_output_tokens: list[list[int]]
    round_ttfts: list[list[list[float]]]  # [target][round]: TTFTs of the successful requests


async def run_compare(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    requests: Sequence[BenchRequest],
    load: LoadSpec,
    rounds: int,
    progress: Progress | None = None,
    meters: Sequence[CpuMeter | None] | None = None,
    settle: float = 0.0,
) -> CompareOutcome:
    """The same slices of the workload against each target in turn, alternating which goes first
    (AB, BA, AB ...): every target gets the whole machine in its turn, and slow drifts of the
    machine's load fall on both alike. A target's duration is the sum of its turns.

    ``settle`` seconds pass before every turn and are nobody's time: a server that has just
    finished a turn keeps working for a while (vLLM's CPU worker busy-polls its shared-memory
    queue for a second after its last step, on the core the other engine computes on), and the
    next turn must not pay for it."""
    slices = split_rounds(requests, rounds)
    outputs: list[list[RequestOutput]] = [[] for _ in targets]
    durations: list[list[float]] = [[] for _ in targets]
    tokens: list[list[int]] = [[] for _ in targets]
    ttfts: list[list[list[float]]] = [[] for _ in targets]
    cpu: list[tuple[float, float] | None] = [None for _ in targets]
    for k, chunk in enumerate(slices):
        order = list(range(len(targets)))
        if k % 2:
            order.reverse()
        for t in order:
            if settle > 0:
                await asyncio.sleep(settle)
            meter = meters[t] if meters else None
            res = await run_once(session, targets[t], chunk, load, progress, meter)
            outputs[t].extend(res.outputs)
            durations[t].append(res.duration)
            tokens[t].append(sum(o.output_tokens for o in res.outputs if o.success))
            ttfts[t].append([o.ttft for o in res.outputs if o.success])
            if res.cpu is not None:
                api, engine = cpu[t] or (0.0, 0.0)
                cpu[t] = (api + res.cpu[0], engine + res.cpu[1])
    per_target = [RunOutcome(outputs[t], sum(durations[t]), cpu[t]) for t in range(len(targets))]
    return CompareOutcome(per_target, durations, tokens, ttfts)
