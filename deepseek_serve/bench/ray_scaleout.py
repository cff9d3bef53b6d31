"""Scale-out on Ray: what the Ray path costs and what affinity routing buys. Prints numbers.

1. Time to first token, one engine in the server process vs one replica behind Ray Serve (same
   machine, same HTTP layer, sequential streamed completions): the difference is the Ray path.
2. vLLM prefix-cache hit rate with two replicas, affinity routing on vs off, on editor-like
   traffic: fill-in-the-middle completions in a few files, the cursor moving around each file.
   Hit rate = prompt tokens served from the prefix cache / prompt tokens, summed over replicas.

Runs a private Ray cluster on this machine (its own temp dir and ports) and the tiny demo model:

    .venv/bin/python -m deepseek_serve.bench.ray_scaleout [--requests 40] [--files 8] [--rounds 6]

(part 2 also runs twice the files with half the visits each).
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


def ttft(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=60) as http:
        for i in range(n + 3):
            body = {"model": NAME, "prompt": f"def f{i}(x):\n    return", "max_tokens": 8}
            body["stream"] = True
            t = time.perf_counter()
            with http.stream("POST", f"{url}/v1/completions", json=body) as r:
                lines = r.iter_lines()
                for line in lines:
                    if line.startswith("data: {"):
                        if i >= 3:  # warm-up
                            out.append(time.perf_counter() - t)
                        break
                for _ in lines:
                    pass
    return out


def files(n: int, rng: random.Random) -> list[str]:
    words = ["request", "value", "item", "result", "config", "index", "buffer", "token"]
    out = []
    for f in range(n):
        body = [f"# module_{f}.py\nimport os\n\n"]
        for i in range(45):
            a, b = rng.sample(words, 2)
            body.append(f"def {a}_{f}_{i}({b}):\n    return {b}.{a}({i} * {f})\n\n")
        out.append("".join(body))
    return out


def editor_traffic(url: str, sources: list[str], rounds: int, seed: int) -> None:
    """FIM completions: every round visits every file in random order, cursor anywhere in the
    second half of the file, four requests at a time."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(rounds):
        for f in rng.sample(range(len(sources)), len(sources)):
            text = sources[f]
            cut = rng.randrange(len(text) // 2, len(text))
            jobs.append(
                {"model": NAME, "prompt": text[:cut], "suffix": text[cut:], "max_tokens": 8}
            )
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    if not jobs:
                        return
                    body = jobs.pop(0)
                http.post(f"{url}/v1/completions", json=body).raise_for_status()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextmanager
def replica_counters(address: str, url: str, model: Path) -> Iterator[Any]:
    """A function returning the summed ``EngineReplica.describe`` counters of both replicas."""
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

        def read() -> dict[str, Any]:
            seen: dict[str, dict[str, Any]] = {}
            for _ in range(100):
                info = handle.describe.remote().result(timeout_s=30)
                seen[info["replica"]] = info
                if len(seen) == 2:
                    break
            return {
                "prompt": sum(i["prompt_tokens"] for i in seen.values()),
                "cached": sum(i["cached_tokens"] for i in seen.values()),
                "served": [seen[k]["served"] for k in sorted(seen)],
            }

        yield read
    finally:
        ray.shutdown()
        context._set_global_client(None)  # type: ignore[no-untyped-call]  # Serve's client of this cluster; the next is another


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[int(0.9 * (len(xs) - 1))]
    return f"median {1000 * statistics.median(xs):.1f} ms, p90 {1000 * p90:.1f} ms (n={len(xs)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40, help="TTFT samples per path")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    model = build_demo_model("demo", work / "tiny-coder")

    print("1. time to first token, sequential streamed completions")
    with server(model, work) as url:
        single = ttft(url, args.requests)
    with (
        local_cluster(nodes=1, cpus_per_node=2) as cluster,
        server(model, work, "--replicas", "1", "--ray-address", cluster.address) as url,
    ):
        via_ray = ttft(url, args.requests)
    print(f"  one engine in the server: {summary(single)}")
    print(f"  one replica via Ray:      {summary(via_ray)}")
    added = statistics.median(via_ray) - statistics.median(single)
    print(f"  added by the Ray path (median): {1000 * added:+.1f} ms")

    workloads = [(args.files, args.rounds), (2 * args.files, max(1, args.rounds // 2))]
    print("2. prefix cache, 2 replicas, FIM completions in F files, R visits per file")
    for flag in ("--route-affinity", "--no-route-affinity"):
        with local_cluster(nodes=2, cpus_per_node=1) as cluster:
            extra = ("--replicas", "2", "--ray-address", cluster.address, flag)
            with (
                server(model, work, *extra) as url,
                replica_counters(cluster.address, url, model) as read,
            ):
                for seed, (n_files, rounds) in enumerate(workloads):
                    sources = files(n_files, random.Random(seed))  # fresh code each workload
                    before = read()
                    editor_traffic(url, sources, rounds, seed=seed)
                    after = read()
                    prompt = after["prompt"] - before["prompt"]
                    cached = after["cached"] - before["cached"]
                    per_replica = [
                        a - b for a, b in zip(after["served"], before["served"], strict=True)
                    ]
                    print(
                        f"  {flag:20s} F={n_files:2d} R={rounds}: hit rate "
                        f"{100 * cached / max(prompt, 1):5.1f}% ({cached}/{prompt} prompt "
                        f"tokens cached), requests per replica {sorted(per_replica)}"
                    )


if __name__ == "__main__":
    main()
