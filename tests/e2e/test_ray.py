"""Scale-out on Ray: two engine replicas on a real two-node Ray cluster, behind one server.

One cluster and one server (``--replicas 2``) for the whole module: two engine starts, plus the
replacement of the replica the last test kills. The replicas need one CPU each and each node has
one, so they must land on different nodes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
import ray
from openai import OpenAI
from ray import serve
from ray.cluster_utils import Cluster

from deepseek_serve.demo import build_demo_model
from deepseek_serve.ray_engine import DEPLOYMENT, app_name
from deepseek_serve.settings import Settings
from tests.e2e.conftest import LiveServer, start_server
from tests.e2e.ray_cluster import local_cluster

NAME = "tiny-coder-ray"
RECOVERY_TIMEOUT = 240


@dataclass
class RayServer:
    live: LiveServer
    cluster: Cluster
    handle: Any  # a deployment handle of this test process, for EngineReplica.describe

    def replicas(self, expected: int = 2) -> dict[str, dict[str, Any]]:
        """``describe`` of each running replica, by replica id."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(200):
            info = self.handle.describe.remote().result(timeout_s=30)
            seen[info["replica"]] = info
            if len(seen) == expected:
                return seen
        raise AssertionError(f"saw {len(seen)} replicas, expected {expected}")

    def served(self) -> dict[str, int]:
        return {rid: info["served"] for rid, info in self.replicas().items()}

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.live.base_url}/health", timeout=10).json()
        return body


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayServer]:
    root = tmp_path_factory.mktemp("e2e-ray")
    model = build_demo_model("demo", root / NAME)
    with local_cluster(nodes=2, cpus_per_node=1) as cluster:
        extra = [
            "--replicas", "2",
            "--ray-address", cluster.address,
            "--gpu-memory-utilization", "0.15",  # two engines beside everyone else's
        ]  # fmt: skip
        servers = start_server(root, model, NAME, extra)
        live = next(servers)
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            port = int(live.base_url.rsplit(":", 1)[1])
            name = app_name(Settings(served_model_name=NAME, model=str(model), port=port))
            handle = serve.get_deployment_handle(DEPLOYMENT, app_name=name)
            yield RayServer(live, cluster, handle)
        finally:
            ray.shutdown()
            next(servers, None)  # stops the server (and checks it stopped cleanly)


@pytest.fixture(scope="module")
def client(ray_server: RayServer) -> OpenAI:
    base = f"{ray_server.live.base_url}/v1"
    return OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)


def deltas(before: dict[str, int], after: dict[str, int]) -> list[int]:
    return sorted(after[rid] - before.get(rid, 0) for rid in after)


def test_replicas_run_on_different_nodes(ray_server: RayServer) -> None:
    nodes = {
        node.node_id for node in [ray_server.cluster.head_node, *ray_server.cluster.worker_nodes]
    }
    infos = ray_server.replicas()
    assert {info["node_id"] for info in infos.values()} == nodes  # one replica per node
    assert all(info["engine_pids"] for info in infos.values())  # each has its own engine core
    assert ray_server.health() == {
        "status": "ok",
        "requests_in_engine": 0,
        "replicas": {"running": 2, "desired": 2},
    }


def test_each_replicas_engine_tokenizer_is_checked_at_start(ray_server: RayServer) -> None:
    """The start-up check of the tokenizer vLLM itself loaded runs on every replica (it once
    ran only for the in-process engine)."""
    assert "engine tokenizer verified against the DeepSeek golden ids" in ray_server.live.log()


def test_same_api_streams_through_the_replicas(client: OpenAI) -> None:
    chunks = list(
        client.completions.create(model=NAME, prompt="def fib(n):", max_tokens=12, stream=True)
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 2  # token by token
    assert chunks[-1].choices[0].finish_reason == "length"
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 5


def test_a_session_sticks_to_one_replica(ray_server: RayServer, client: OpenAI) -> None:
    for session in ("editor-1", "editor-2"):
        before = ray_server.served()
        for i in range(6):
            client.completions.create(
                model=NAME, prompt=f"x{i} = {i} * {session!r}", max_tokens=2, user=session
            )
        assert deltas(before, ray_server.served()) == [0, 6], session


def test_completions_in_one_file_stick_to_one_replica_and_hit_its_cache(
    ray_server: RayServer, client: OpenAI
) -> None:
    source = "".join(
        f"def handler_{i}(request):\n    return respond({i}, request)\n\n" for i in range(40)
    )
    before = ray_server.replicas()
    for cut in range(len(source) - 300, len(source), 50):  # the cursor moves; no session given
        client.completions.create(
            model=NAME, prompt=source[:cut], suffix=source[cut:], max_tokens=2
        )
    after = ray_server.replicas()
    served = {rid: after[rid]["served"] - before[rid]["served"] for rid in after}
    assert sorted(served.values()) == [0, 6]
    (target,) = [rid for rid, n in served.items() if n == 6]
    cached = after[target]["cached_tokens"] - before[target]["cached_tokens"]
    prompt = after[target]["prompt_tokens"] - before[target]["prompt_tokens"]
    assert cached > 0.5 * prompt  # 5 of the 6 reuse most of the file from vLLM's prefix cache


def test_unrelated_requests_spread_over_both_replicas(
    ray_server: RayServer, client: OpenAI
) -> None:
    before = ray_server.served()
    for i in range(16):
        client.completions.create(model=NAME, prompt=f"print({i})", max_tokens=1)
    spread = deltas(before, ray_server.served())
    assert sum(spread) == 16 and spread[0] > 0, spread


def test_a_client_that_leaves_aborts_the_request_on_its_replica(ray_server: RayServer) -> None:
    body = {"model": NAME, "prompt": "long", "max_tokens": 3000, "stream": True}
    body |= {"ignore_eos": True}
    url = f"{ray_server.live.base_url}/v1/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as stream:
        lines = (line for line in stream.iter_lines() if line)
        next(lines), next(lines)
        busy = sum(info["unfinished"] for info in ray_server.replicas().values())
        assert busy == 1
    # Left after two chunks: the replica's engine drops it long before 3000 tokens.
    deadline = time.monotonic() + 5
    while sum(info["unfinished"] for info in ray_server.replicas().values()):
        assert time.monotonic() < deadline, "the replica still runs the abandoned request"
        time.sleep(0.05)
    assert ray_server.health()["requests_in_engine"] == 0


@dataclass
class Traffic:
    """Short completions sent back to back from a thread, with when each started."""

    url: str
    results: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=120) as http:
            i = 0
            while not self.stop.is_set():
                started = time.monotonic()
                body = {"model": NAME, "prompt": f"y = {i}", "max_tokens": 4}
                r = http.post(f"{self.url}/v1/completions", json=body)
                self.results.append((started, r.status_code, r.text[:300]))
                i += 1


def test_a_killed_replica_is_replaced_while_the_other_serves(ray_server: RayServer) -> None:
    """Kills one replica's process mid-traffic, then waits until Ray has replaced it (two
    replicas, one per node, as the module found them), so the tests may run in any order."""
    url = ray_server.live.base_url
    before = ray_server.served()
    httpx.post(
        f"{url}/v1/completions",
        json={"model": NAME, "prompt": "victim", "max_tokens": 1, "user": "victim"},
        timeout=60,
    ).raise_for_status()
    infos = ray_server.replicas()
    (victim,) = [rid for rid, info in infos.items() if info["served"] > before[rid]]
    pid, engine_pids = infos[victim]["pid"], infos[victim]["engine_pids"]
    survivor_node = next(i["node_id"] for rid, i in infos.items() if rid != victim)

    traffic = Traffic(url)
    worker = threading.Thread(target=traffic.run)
    worker.start()
    frames: list[str] = []
    try:
        body = {"model": NAME, "prompt": "long", "max_tokens": 3000, "stream": True}
        body |= {"ignore_eos": True, "user": "victim"}  # same session: on the victim
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as stream:
            lines = (line for line in stream.iter_lines() if line)
            frames += [next(lines), next(lines)]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            frames += list(lines)

        # In flight on the dead replica: an error frame, then [DONE].
        assert frames[-1] == "data: [DONE]"
        error = json.loads(frames[-2].removeprefix("data: "))["error"]
        assert error["code"] == "replica_died" and error["type"] == "service_unavailable_error"

        # Capacity is reported degraded, then Ray brings the replica back.
        degraded = recovered = None
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while recovered is None and time.monotonic() < deadline:
            health = ray_server.health()
            if health["status"] == "degraded" and degraded is None:
                degraded = health
            if degraded is not None and health["status"] == "ok":
                recovered = health
            time.sleep(0.5)
        assert degraded is not None and degraded["replicas"] == {"running": 1, "desired": 2}
        assert recovered is not None, f"not recovered in {RECOVERY_TIMEOUT}s"
        assert recovered["replicas"] == {"running": 2, "desired": 2}
        time.sleep(2)  # a little traffic on the replacement too
    finally:
        traffic.stop.set()
        worker.join(timeout=120)

    # No request that started after the kill was lost (none were 5xx, none errored).
    after_kill = [(code, text) for started, code, text in traffic.results if started > killed_at]
    assert len(after_kill) >= 10
    assert all(code == 200 for code, _ in after_kill), [t for c, t in after_kill if c != 200][:3]
    # The dead replica's engine core went with it (Ray's subreaper), nothing leaks.
    gone = psutil.wait_procs([p for p in map(_proc, engine_pids) if p is not None], timeout=30)
    assert not gone[1], f"engine processes of the killed replica still alive: {gone[1]}"
    # The replacement lands on the freed node: again one replica per node.
    infos = ray_server.replicas()
    assert victim not in infos
    nodes = sorted(info["node_id"] for info in infos.values())
    assert len(set(nodes)) == 2 and survivor_node in nodes


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
