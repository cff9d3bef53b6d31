"""Scale-out on Ray: what the Ray path costs and what affinity routing buys. Prints numbers.

1. The Ray path's cost: one engine in the server process against one replica behind Ray Serve,
   both servers up for the whole run and driven in turns (A B B A ...), so drifts of this noisy
   machine fall on both alike. Time to first token of sequential streamed completions, then
   (``--throughput-prompts``) output throughput at concurrency 32 through ``deepseek-serve bench
   --compare``.
2. vLLM prefix-cache hit rate with two replicas, per routing policy (bounded-load affinity, affinity
   that never yields, least-loaded only), against its ceiling: the hits one replica holding every
   prefix ever sent would have had (an unbounded cache, vLLM's block size, vLLM's rule that the
   last prompt token is always computed), from the prompt token ids the server returns, in the
   order the requests were sent. Workloads: fill-in-the-middle in F files, R visits each, four at
   a time; and a hot spot: 8 editors at once, 6 of them in one repository, every prompt headed by
   its repository's shared context. Load per replica: requests served and prompt tokens computed.

Runs private Ray clusters on this machine (their own temp dirs and ports) and the tiny demo model:

    .venv/bin/python -m deepseek_serve.bench.ray_scaleout [--requests 60] [--files 8] [--rounds 6]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deepseek_serve.demo import build_demo_model  # noqa: E402
from deepseek_serve.ray_engine import DEPLOYMENT, app_name  # noqa: E402
from deepseek_serve.settings import Settings  # noqa: E402
from tests.e2e.conftest import free_port  # noqa: E402
from tests.e2e.ray_cluster import local_cluster  # noqa: E402

NAME = "tiny"
POLICIES = {  # routing policy -> server flags
    "bounded": ("--route-affinity", "--route-balance", "1.25"),  # affinity within 1.25x the mean
    "unbounded": ("--route-affinity", "--route-balance", "0"),  # affinity never yields
    "least-loaded": ("--no-route-affinity",),
}


@contextmanager
def server(model: Path, work: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "deepseek_serve", "--config", str(ROOT / "configs" / "cpu.yaml"),
        "--model", str(model), "--served-model-name", NAME, "--port", str(port),
        "--cache-dir", str(work / "cache"), "--gpu-memory-utilization", "0.15",
        "--log-level", "warning", *extra,
    ]  # fmt: skip
    log = (work / f"server-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        print(f"  started in {time.monotonic() - started:.0f} s: {' '.join(extra) or 'one engine'}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def ttft(url: str, n: int, offset: int) -> list[float]:
    """Seconds to the first token of ``n`` sequential streamed completions (prompts differ by
    ``offset`` so that no two turns share one)."""
    out = []
    with httpx.Client(timeout=60) as http:
        for i in range(offset, offset + n):
            body = {"model": NAME, "prompt": f"def f{i}(x):\n    return", "max_tokens": 8}
            body["stream"] = True
            t = time.perf_counter()
            with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        out.append(time.perf_counter() - t)
                        break
                for _ in lines:
                    pass
    return out


def ray_path_cost(single: str, via_ray: str, requests: int, turns: int) -> None:
    """Both servers up; turns A B B A A B ..., a pause before each (vLLM's CPU worker spins for
    a second after its last step, beside the other server's worker)."""
    for url in (single, via_ray):
        ttft(url, 3, 0)  # warm-up
    times: dict[str, list[float]] = {single: [], via_ray: []}
    added = []
    per_turn = max(1, requests // turns)
    for turn in range(turns):
        order = (single, via_ray) if turn % 2 == 0 else (via_ray, single)
        medians = {}
        for url in order:
            time.sleep(2)
            xs = ttft(url, per_turn, 1000 * (turn + 1))
            times[url] += xs
            medians[url] = statistics.median(xs)
        added.append(medians[via_ray] - medians[single])
    print(f"  one engine in the server: {summary(times[single])}")
    print(f"  one replica via Ray:      {summary(times[via_ray])}")
    pooled = statistics.median(times[via_ray]) - statistics.median(times[single])
    print(
        f"  added by the Ray path: median {1000 * pooled:+.2f} ms (pooled); per turn pair "
        f"{', '.join(f'{1000 * a:+.1f}' for a in added)} ms"
    )


def throughput(single: str, via_ray: str, prompts: int, work: Path) -> None:
    cmd = [
        sys.executable, "-m", "deepseek_serve.bench", "--compare", via_ray, single,
        "--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64",
        "--ignore-eos", "--num-prompts", str(prompts), "--max-concurrency", "32",
        "--rounds", "8", "--num-warmups", "8", "--save-result",
        "--result-dir", str(work / "throughput"),
    ]  # fmt: skip
    print(f"  {' '.join(cmd[1:])}  (A: via Ray, B: one engine)", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


WORDS = ["request", "value", "item", "result", "config", "index", "buffer", "token"]


def module(tag: str, defs: int, rng: random.Random) -> str:
    body = [f"# {tag}.py\nimport os\n\n"]
    for i in range(defs):
        a, b = rng.sample(WORDS, 2)
        body.append(f"def {a}_{tag}_{i}({b}):\n    return {b}.{a}({i} * {len(tag)})\n\n")
    return "".join(body)


def fim(text: str, rng: random.Random, head: str = "") -> dict[str, Any]:
    """A completion at a cursor anywhere in the second half of ``text``, after ``head``."""
    cut = rng.randrange(len(text) // 2, len(text))
    return {"prompt": head + text[:cut], "suffix": text[cut:]}


def uniform_jobs(n_files: int, rounds: int, seed: int) -> list[list[dict[str, Any]]]:
    """Every round visits every file in random order; four workers share one queue."""
    rng = random.Random(seed)
    sources = [module(f"module_{seed}_{f}", 45, rng) for f in range(n_files)]
    queue = [
        fim(sources[f], rng) for _ in range(rounds) for f in rng.sample(range(n_files), n_files)
    ]
    return [queue] * 4  # the same list: workers pop from it in turn


def hot_spot_jobs(
    visits: int, seed: int
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """8 editors, 6 in repository 0 and one each in 1 and 2. Every prompt is headed by its
    repository's context (three shared modules under DeepSeek ``#path`` headers), then one of
    four edited files up to the cursor. Returns one warm-up request per repository (sent first:
    its context is already cached somewhere, as in a team's steady state) and the editors'."""
    rng = random.Random(seed)
    contexts = [
        "".join(
            f"#repo{r}/{m}.py\n{module(f'repo{r}_{m}', 12, rng)}\n"
            for m in ("util", "models", "config")
        )
        for r in range(3)
    ]
    files = [[module(f"repo{r}_file{f}", 12, rng) for f in range(4)] for r in range(3)]

    def job(repo: int) -> dict[str, Any]:
        f = rng.randrange(4)
        return fim(files[repo][f], rng, head=f"{contexts[repo]}#repo{repo}/file{f}.py\n")

    warm = [job(r) for r in range(3)]
    return warm, [[job(repo) for _ in range(visits)] for repo in [0, 0, 0, 0, 0, 0, 1, 2]]


@dataclass
class Sent:
    at: float
    prompt_ids: list[int]


@dataclass
class Traffic:
    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, url: str, queues: list[list[dict[str, Any]]]) -> None:
        """One worker per queue; each sends its queue's requests one after another."""

        def worker(queue: list[dict[str, Any]]) -> None:
            with httpx.Client(timeout=120) as http:
                while True:
                    with self.lock:
                        if not queue:
                            return
                        job = queue.pop(0)
                    body = {"model": NAME, "max_tokens": 8, "return_token_ids": True, **job}
                    at = time.perf_counter()
                    r = http.post(f"{url}/v1/completions", json=body)
                    r.raise_for_status()
                    ids = r.json()["choices"][0]["prompt_token_ids"]
                    with self.lock:
                        self.sent.append(Sent(at, ids))

        threads = [threading.Thread(target=worker, args=(q,)) for q in queues]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def ceiling(prompts: list[list[int]], block: int, before: list[list[int]]) -> int:
    """Prompt tokens one replica holding every earlier prompt's blocks (``before``'s too) would
    find cached in ``prompts``: vLLM caches full blocks and always computes a prompt's last
    token."""
    seen: set[int] = set()
    hits = 0
    for i, ids in enumerate([*before, *prompts]):
        prev, chain = 0, []
        for start in range(0, len(ids) // block * block, block):
            prev = hash((prev, tuple(ids[start : start + block])))
            chain.append(prev)
        usable = (len(ids) - 1) // block
        for h in chain[:usable]:
            if h not in seen:
                break
            hits += block if i >= len(before) else 0
        seen.update(chain)
    return hits


@contextmanager
def replica_counters(address: str, url: str, model: Path) -> Iterator[Any]:
    """A function returning the ``EngineReplica.describe`` counters of both replicas."""
    import ray
    from ray import serve
    from ray.serve import context

    ray.init(address=address, log_to_driver=False)
    try:
        port = int(url.rsplit(":", 1)[1])
        name = app_name(
            Settings.model_validate({"served_model_name": NAME, "model": str(model), "port": port})
        )
        handle = serve.get_deployment_handle(DEPLOYMENT, app_name=name)

        def read() -> dict[str, dict[str, Any]]:
            seen: dict[str, dict[str, Any]] = {}
            for _ in range(100):
                info = handle.describe.remote().result(timeout_s=30)
                seen[info["replica"]] = info
                if len(seen) == 2:
                    break
            return seen

        yield read
    finally:
        ray.shutdown()
        context._set_global_client(None)  # type: ignore[no-untyped-call]  # Serve's client of this cluster; the next is another


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[int(0.9 * (len(xs) - 1))]
    return f"median {1000 * statistics.median(xs):.1f} ms, p90 {1000 * p90:.1f} ms (n={len(xs)})"


def spread(xs: list[int]) -> str:
    mean = sum(xs) / len(xs)
    return f"{sorted(xs)} (max {max(xs) / mean:.2f}x the mean)"


def cache_run(model: Path, work: Path, policy: str, workloads: list[tuple[str, Any]]) -> None:
    with local_cluster(nodes=2, cpus_per_node=1) as cluster:
        extra = ("--replicas", "2", "--ray-address", cluster.address, *POLICIES[policy])
        with (
            server(model, work, *extra) as url,
            replica_counters(cluster.address, url, model) as read,
        ):
            for label, (warm, queues) in workloads:
                warming = Traffic()
                warming.run(url, [warm])  # one at a time, not counted
                before = read()
                traffic = Traffic()
                traffic.run(url, queues)
                after = read()
                block = next(iter(after.values()))["block_size"]
                delta = {
                    k: {
                        c: after[k][c] - before[k][c]
                        for c in ("served", "prompt_tokens", "cached_tokens")
                    }
                    for k in after
                }
                prompt = sum(d["prompt_tokens"] for d in delta.values())
                cached = sum(d["cached_tokens"] for d in delta.values())
                ideal = ceiling(
                    [s.prompt_ids for s in sorted(traffic.sent, key=lambda s: s.at)],
                    block,
                    [s.prompt_ids for s in warming.sent],
                )
                print(
                    f"  {policy:12s} {label}: hit rate {100 * cached / max(prompt, 1):5.1f}% "
                    f"of {prompt} prompt tokens, ceiling {100 * ideal / max(prompt, 1):5.1f}%: "
                    f"{100 * cached / max(ideal, 1):5.1f}% of it"
                )
                print(
                    f"{'':16s}requests per replica {spread([d['served'] for d in delta.values()])}"
                )
                computed = [d["prompt_tokens"] - d["cached_tokens"] for d in delta.values()]
                print(f"{'':16s}prompt tokens computed per replica {spread(computed)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60, help="TTFT samples per path")
    parser.add_argument("--turns", type=int, default=6, help="TTFT turns per path")
    parser.add_argument(
        "--throughput-prompts", type=int, default=512, help="concurrency 32; 0: skip"
    )
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--visits", type=int, default=12, help="hot spot: requests per editor")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma list")
    parser.add_argument("--workloads", default="fim,fim2,hot", help="comma list of fim, fim2, hot")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    model = build_demo_model("demo", work / "tiny-coder")

    if not args.skip_cost:
        print("1. the Ray path's cost: both servers up, driven in turns")
        with (
            server(model, work) as single,
            local_cluster(nodes=1, cpus_per_node=2) as cluster,
            server(model, work, "--replicas", "1", "--ray-address", cluster.address) as via_ray,
        ):
            ray_path_cost(single, via_ray, args.requests, args.turns)
            if args.throughput_prompts:
                throughput(single, via_ray, args.throughput_prompts, work)

    if not args.skip_cache:
        print("2. prefix cache, 2 replicas, per routing policy")
        for policy in args.policies.split(","):
            every = {
                "fim": (
                    f"fim F={args.files} R={args.rounds}",
                    ([], uniform_jobs(args.files, args.rounds, 0)),
                ),
                "fim2": (
                    f"fim F={2 * args.files} R={max(1, args.rounds // 2)}",
                    ([], uniform_jobs(2 * args.files, max(1, args.rounds // 2), 1)),
                ),
                "hot": (f"hot spot, 8 editors x {args.visits}", hot_spot_jobs(args.visits, 2)),
            }
            workloads = [every[w] for w in args.workloads.split(",")]
            cache_run(model, work, policy, workloads)


if __name__ == "__main__":
    main()
