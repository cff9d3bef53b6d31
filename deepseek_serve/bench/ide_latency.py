"""IDE latency benchmarks: prints numbers, asserts nothing.

1. ``pack``: time to pack a huge repository context into the window with the real tokenizer.
2. ``priority``: /infill latency while multi-prompt batch work saturates the engine, under vLLM's
   first-come scheduler and under its priority scheduler (``scheduling_policy=priority``).
   Starts one server per policy (CPU config, demo model, ``--max-num-seqs 4`` so that the
   engine is saturated by the batch load).

    .venv/bin/python -m deepseek_serve.bench.ide_latency pack
    .venv/bin/python -m deepseek_serve.bench.ide_latency priority \\
        [--requests 20] [--batch-clients 6]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

EOS = 32014


def bench_pack(repeats: int) -> None:
    from deepseek_serve.demo import packaged_tokenizer_dir
    from deepseek_serve.prompts.packing import PieceCache, pack_repo_prompt
    from deepseek_serve.prompts.tokenizer import PromptTokenizer, load_hf_tokenizer
    from deepseek_serve.prompts.variant import detect_variant
    from deepseek_serve.templates.repo import RepoFile

    path = packaged_tokenizer_dir("deepseek-coder")
    hf = load_hf_tokenizer(path)
    variant = detect_variant({"model_type": "llama"}, {}, hf)
    tok = PromptTokenizer(hf, variant)
    lines = "".join(f"value_{i} = compute({i}, 'text')  # comment {i}\n" for i in range(4000))
    plugin = "".join(f"    value_{i} = compute({i})\n" for i in range(64))  # a ring chunk
    cases = [
        ("huge: 3 files + prefix + suffix of 180 kB each", [lines] * 3, lines, lines, False),
        ("same, files cached from the previous request", [lines] * 3, lines, lines, True),
        ("llama.vim-sized: 16 chunks of 64 lines, 256+64 lines", [plugin] * 16,
         plugin * 4, plugin, False),
        ("same, chunks cached", [plugin] * 16, plugin * 4, plugin, True),
    ]  # fmt: skip
    for label, texts, prefix, suffix, cached in cases:
        extra = [RepoFile(f"m{i}.py", t + f"# {i}\n") for i, t in enumerate(texts)]
        times = []
        for _ in range(repeats):
            cache = PieceCache()
            if cached:
                pack_repo_prompt(tok, files=extra, prefix="", suffix="", budget=4096, cache=cache)
            start = time.perf_counter()
            packed = pack_repo_prompt(tok, files=extra, prefix=prefix, suffix=suffix,
                                      budget=4096 - 128, filename="t.py", cache=cache)  # fmt: skip
            times.append((time.perf_counter() - start) * 1000)
        print(
            f"pack {label}: median {statistics.median(times):.1f} ms "
            f"(min {min(times):.1f}), prompt {len(packed.token_ids)} tokens, "
            f"dropped {packed.tokens_dropped}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(policy: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "deepseek_serve", "--config", str(ROOT / "configs/cpu.yaml"),
           "--model", "demo", "--port", str(port), "--max-num-seqs", "4"]  # fmt: skip
    if policy == "priority":
        cmd += ["--engine-arg", "scheduling_policy=priority"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not healthy: see {log}")


async def _measure(url: str, requests: int, batch_clients: int) -> list[float]:
    stop = asyncio.Event()
    batch = {"prompt": ["a", "b", "c", "d"], "max_tokens": 200, "logit_bias": {str(EOS): -100}}
    infill = {"input_prefix": "def f(x):\n", "input_suffix": "\n", "prompt": "    ",
              "n_predict": 16, "logit_bias": {str(EOS): -100}}  # fmt: skip

    async def batch_client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            await http.post("/v1/completions", json=batch)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        workers = [asyncio.create_task(batch_client(http)) for _ in range(batch_clients)]
        await asyncio.sleep(3)  # let the batch work fill the engine
        latencies = []
        for _ in range(requests):
            start = time.perf_counter()
            r = await http.post("/infill", json=infill)
            latencies.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text
        stop.set()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return latencies


def bench_priority(requests: int, batch_clients: int) -> None:
    logs = Path(tempfile.mkdtemp(prefix="ide-bench-"))
    for policy in ("fcfs", "priority"):
        proc, url = _start(policy, logs / f"{policy}.log")
        try:
            lat = asyncio.run(_measure(url, requests, batch_clients))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        lat.sort()
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(
            f"{policy:>8}: /infill (16 tokens) under {batch_clients} batch clients x 4 prompts, "
            f"max_num_seqs 4: p50 {statistics.median(lat):.0f} ms, p95 {p95:.0f} ms, "
            f"mean {statistics.mean(lat):.0f} ms ({requests} requests)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["pack", "priority"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--batch-clients", type=int, default=6)
    args = parser.parse_args()
    if args.what == "pack":
        bench_pack(args.repeats)
    else:
        bench_priority(args.requests, args.batch_clients)


if __name__ == "__main__":
    main()
