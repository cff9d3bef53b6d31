"""Scale-out settings, Serve deployment options, the affinity router and Ray error mapping,
without a cluster (the e2e tier runs them on a real one)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray import exceptions as ray_errors

from deepseek_serve.cli import settings_from_argv
from deepseek_serve.engine import SamplingOptions
from deepseek_serve.errors import InvalidRequestError, ReplicaDiedError
from deepseek_serve.ray_engine import (
    REPLICA_ENV,
    _as_api_error,
    deployment_options,
    local_tokenizer_dir,
    tokenizer_files,
)
from deepseek_serve.ray_router import AffinityRouter, block_hashes
from deepseek_serve.ray_start import (
    ReplicaStartError,
    StartView,
    replica_bundle,
    vllm_uses_gpus,
    wait_running,
)
from deepseek_serve.settings import Settings


def test_replica_flags_and_autoscaling_bounds() -> None:
    s = settings_from_argv(["--replicas", "3", "--ray-address", "head:6379", "--no-route-affinity"])
    assert (s.replicas, s.ray_address, s.route_affinity) == (3, "head:6379", False)
    s = settings_from_argv(["--min-replicas", "1", "--max-replicas", "4"])
    assert s.replicas == 1  # autoscaling starts at the minimum
    with pytest.raises(SystemExit, match="min_replicas and max_replicas"):
        settings_from_argv(["--max-replicas", "4"])
    with pytest.raises(SystemExit, match="exceeds"):
        settings_from_argv(["--min-replicas", "5", "--max-replicas", "4"])
    with pytest.raises(SystemExit, match="replicas"):
        settings_from_argv(["--replicas", "-1"])
    assert settings_from_argv(["--route-balance", "1.5"]).route_balance == 1.5
    assert settings_from_argv([]).route_balance == 1.25
    with pytest.raises(SystemExit, match="route_balance"):
        settings_from_argv(["--route-balance", "0.5"])  # below the mean: no replica would fit


def test_each_replica_reserves_its_tp_gpus_together() -> None:
    opts = deployment_options(Settings(replicas=2, tensor_parallel_size=4), uses_gpus=True)
    assert opts["num_replicas"] == 2
    assert opts["placement_group_bundles"] == [{"CPU": 1.0, "GPU": 4.0}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"  # one node per replica
    actor = opts["ray_actor_options"]
    assert (actor["num_cpus"], actor["num_gpus"]) == (1.0, 4.0)
    # Serve's throughput-optimized replica settings, read by the replica actor when it starts
    assert actor["runtime_env"]["env_vars"] == REPLICA_ENV
    kwargs = opts["request_router_config"]["request_router_kwargs"]
    assert kwargs == {"affinity": True, "balance": 1.25}
    cpu = deployment_options(Settings(replicas=1, replica_gpus=0, replica_cpus=2))
    assert cpu["placement_group_bundles"] == [{"CPU": 2.0}]
    auto = deployment_options(Settings(min_replicas=2, max_replicas=8, replicas=3), True)
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 8,
        "initial_replicas": 3,
        "target_ongoing_requests": 16,
    }


def test_a_cpu_build_of_vllm_reserves_no_gpu_by_default() -> None:
    """Issue 16: on the CPU build, replicas asked Ray for a GPU each and waited forever."""
    settings = Settings(replicas=2, tensor_parallel_size=2)
    assert replica_bundle(settings, uses_gpus=False) == {"CPU": 1.0}
    assert replica_bundle(settings, uses_gpus=True) == {"CPU": 1.0, "GPU": 2.0}
    explicit = Settings(replicas=1, replica_gpus=1)
    assert replica_bundle(explicit, uses_gpus=False) == {"CPU": 1.0, "GPU": 1.0}
    (bundle,) = deployment_options(settings)["placement_group_bundles"]  # this machine's build
    assert bundle == ({"CPU": 1.0, "GPU": 2.0} if vllm_uses_gpus() else {"CPU": 1.0})


def scripted(views: list[StartView]) -> Callable[[], StartView]:
    script = iter(views)
    return lambda: next(script, views[-1])


def never() -> bool:
    return False


NO_NODE = "No node of the Ray cluster has the resources one replica asks for (CPU 1, GPU 1)"
SERVE_SAYS = (
    "Deployment 'EngineReplica' in application 'x' has 2 replicas that have taken more than 30s "
    "to be scheduled. Resources required for each replica: {...}, total resources available: ..."
)


def test_unschedulable_replicas_are_reported_at_once_and_fail_after_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 16: --replicas 2 without the GPUs each asks for waited forever, silently."""
    read = scripted([StartView("DEPLOYING", SERVE_SAYS, NO_NODE)])
    caplog.set_level(logging.INFO, logger="deepseek_serve.ray_start")
    start = time.monotonic()
    with pytest.raises(ReplicaStartError, match="could be scheduled in 2s: No node"):
        asyncio.run(wait_running(read, 2.0, never))
    assert 2.0 <= time.monotonic() - start < 10
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and NO_NODE in errors[0] and "--replica-schedule-timeout" in errors[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Ray Serve: {SERVE_SAYS}"]  # once, not every poll


def test_replicas_that_get_scheduled_in_time_start() -> None:
    views = [
        StartView("DEPLOYING", SERVE_SAYS, ""),
        StartView("DEPLOYING", "", ""),  # scheduled: the clock stops
        StartView("RUNNING", "", ""),
    ]
    asyncio.run(wait_running(scripted(views), 1.5, never))
    failed = [StartView("DEPLOYING", "", ""), StartView("DEPLOY_FAILED", "boom in __init__", "")]
    with pytest.raises(ReplicaStartError, match="boom in __init__"):
        asyncio.run(wait_running(scripted(failed), 0, never))


def test_ray_failures_become_api_errors() -> None:
    assert isinstance(_as_api_error(ray_errors.ActorDiedError()), ReplicaDiedError)
    refused = InvalidRequestError("bad", param="x")
    wrapped = ray_errors.RayTaskError("generate", "tb", refused)
    assert _as_api_error(wrapped) is refused
    assert _as_api_error(RuntimeError("boom")).status_code == 500


def test_block_hashes_name_prefixes() -> None:
    a = block_hashes(list(range(40)), 16, 100)
    b = block_hashes([*range(32), 99, 98], 16, 100)
    assert len(a) == 2 and a == b  # 40 tokens: two full blocks; the tail is not hashed
    assert block_hashes([7, *range(1, 40)], 16, 100)[1] != a[1]  # chained: the head counts


@pytest.fixture
def router() -> AffinityRouter:
    r = AffinityRouter.__new__(AffinityRouter)  # the state only; Serve builds the rest
    r.initialize_state(block=4, min_match=0.5, balance=1.25, window=10, imbalance=2)
    return r


def replica(name: str) -> Any:
    return SimpleNamespace(replica_id=name)


def pending(ids: list[int], session: str | None = None, rid: str = "r") -> Any:
    return SimpleNamespace(
        args=["req", ids, SamplingOptions(max_tokens=1, session=session)],
        metadata=SimpleNamespace(internal_request_id=rid),
        routing_context=SimpleNamespace(should_backoff=False),
    )


async def test_router_prefers_the_replica_with_the_prefix(router: AffinityRouter) -> None:
    a, b = replica("a"), replica("b")
    file_a = list(range(100, 140))
    router.on_request_routed(pending(file_a, rid="1"), "a", None)
    router.on_request_completed("a", "1")
    ranks = await router.choose_replicas([a, b], pending([*file_a[:36], 1, 2, 3, 4]))
    assert ranks[0] == [a]  # 36 of 40 tokens known on a
    # Only 8 of 40 tokens known (< min_match): least-loaded; both idle, so the one with the
    # smaller share of recent requests.
    ranks = await router.choose_replicas([a, b], pending([*file_a[:8], *range(32)]))
    assert ranks[0] == [b]


async def test_router_keeps_sessions_and_yields_to_load(router: AffinityRouter) -> None:
    router.balance = 0  # here only the bound on requests in flight
    a, b = replica("a"), replica("b")
    router.on_request_routed(pending([1], session="s", rid="1"), "b", None)
    assert (await router.choose_replicas([a, b], pending([9], session="s")))[0] == [b]
    for i in range(2):  # b now runs 3 requests, a none: beyond the imbalance of 2 allowed
        router.on_request_routed(pending([i], rid=f"x{i}"), "b", None)
    assert (await router.choose_replicas([a, b], pending([9], session="s")))[0] == [a]
    router.on_request_completed("b", "x0")
    assert (await router.choose_replicas([a, b], pending([9], session="s")))[0] == [b]
    router._forget({"b"})  # the replica died: its sessions and prefixes go with it
    assert router.preferred([9], "s") is None


def route(router: AffinityRouter, ids: list[int], to: str, rid: str) -> None:
    """A request routed to ``to`` that completes at once (no load in flight)."""
    router.on_request_routed(pending(ids, rid=rid), to, None)
    router.on_request_completed(to, rid)


async def hot_traffic(
    router: AffinityRouter, replicas: list[Any], prompts: list[list[int]]
) -> list[str]:
    """Route ``prompts`` with four in flight (each completes four requests later); the replica
    each went to."""
    chosen: list[str] = []
    for i, ids in enumerate(prompts):
        to = (await router.choose_replicas(replicas, pending(ids)))[0][0].replica_id
        router.on_request_routed(pending(ids, rid=f"h{i}"), to, None)
        chosen.append(to)
        if i >= 3:
            router.on_request_completed(chosen[i - 3], f"h{i - 3}")
    return chosen


async def test_a_hot_prefix_spills_to_a_second_replica_that_then_shares_it(
    router: AffinityRouter,
) -> None:
    """Most editors in one repository: the repository's context heads every prompt. Under load
    (four in flight), the replica that holds it takes them until its share of recent requests
    passes 1.25x the mean; then they spill to the other replica, which holds the head from then
    on too, and the two share the hot prefix."""
    a, b, c = replica("a"), replica("b"), replica("c")
    repo = list(range(100, 140))
    route(router, [*repo, 0], "a", "warm")  # the head is on a
    chosen = await hot_traffic(router, [a, b], [[*repo, i] for i in range(1, 41)])
    assert router.matches([*repo, 99]) == {"a": 40, "b": 40}
    # The share bound over a window of 10: ceil(1.25 * 11 / 2) = 7 of the last ~10 at most.
    last = chosen[-20:]
    assert 6 <= last.count("a") <= 14 and 6 <= last.count("b") <= 14, chosen
    # A third replica joins: a and b hold half of the recent requests each, more than 1.25x a
    # third, so the head spreads to c too, until the three share it.
    chosen = await hot_traffic(router, [a, b, c], [[*repo, i] for i in range(41, 101)])
    assert router.matches([*repo, 99]) == {"a": 40, "b": 40, "c": 40}
    assert all(4 <= chosen[-30:].count(r) <= 16 for r in "abc"), chosen


async def test_an_idle_replica_keeps_its_hits_whatever_its_share(router: AffinityRouter) -> None:
    """Nothing in flight: sending a request to the replica with its prefix costs the balance
    nothing, so one editor's sequential requests stay put however many there are."""
    a, b = replica("a"), replica("b")
    file_a = list(range(100, 140))
    for i in range(30):
        assert (await router.choose_replicas([a, b], pending([*file_a, i])))[0] == [a] or i == 0
        route(router, [*file_a, i], "a", f"r{i}")
    assert router.share["a"] > 5 and "b" not in router.share


async def test_a_short_burst_into_one_file_keeps_its_replica(router: AffinityRouter) -> None:
    """Bounded loads over requests in flight would move the second of two concurrent requests
    into one file to a replica without it: its hits lost for nothing. The share bound looks at
    recent requests, which are balanced here."""
    a, b = replica("a"), replica("b")
    file_a, file_b = list(range(100, 140)), list(range(200, 240))
    for i in range(10):
        route(router, [*file_a, i], "a", f"a{i}")
        route(router, [*file_b, i], "b", f"b{i}")
    router.on_request_routed(pending([*file_a, 1], rid="1"), "a", None)  # in flight on a
    router.on_request_routed(pending([*file_a, 2], rid="2"), "a", None)
    assert (await router.choose_replicas([a, b], pending([*file_a, 3])))[0] == [a]


async def test_the_longest_prefix_wins_and_a_balance_of_zero_never_yields(
    router: AffinityRouter,
) -> None:
    a, b = replica("a"), replica("b")
    repo, file = list(range(100, 120)), list(range(200, 220))
    route(router, repo, "a", "1")
    route(router, [*repo, *file], "b", "2")
    assert router.matches([*repo, *file, 7]) == {"a": 20, "b": 40}
    assert (await router.choose_replicas([a, b], pending([*repo, *file, 7])))[0] == [b]
    router.balance = 0
    for i in range(30):
        route(router, [*repo, *file], "b", f"x{i}")
    assert (await router.choose_replicas([a, b], pending([*repo, *file, 7])))[0] == [b]
    router.balance = 1.25  # b took nearly all of the last ~10: its cache alone no longer wins
    router.on_request_routed(pending([1], rid="busy"), "b", None)  # once it is not idle
    assert (await router.choose_replicas([a, b], pending([*repo, *file, 7])))[0] == [a]
    router.on_request_routed(pending([2], rid="busy-a"), "a", None)  # as busy as b: still a
    assert (await router.choose_replicas([a, b], pending([*repo, *file, 7])))[0] == [a]


async def test_a_new_prefix_goes_to_the_smaller_share_within_the_imbalance(
    router: AffinityRouter,
) -> None:
    """A prompt no replica holds draws its file's later requests to wherever it lands: it goes
    to the replica that served fewer recent requests, even one running a request more, so that
    files spread evenly; beyond ``imbalance`` in flight the least-loaded replica gets it."""
    a, b = replica("a"), replica("b")
    for i in range(3):
        route(router, [100 + i] * 8, "a", f"a{i}")
    router.on_request_routed(pending([7], rid="busy"), "b", None)
    assert (await router.choose_replicas([a, b], pending(list(range(300, 340)))))[0] == [b]
    for i in range(2):  # b now runs 3, a none: beyond the imbalance of 2
        router.on_request_routed(pending([8], rid=f"busy{i}"), "b", None)
    assert (await router.choose_replicas([a, b], pending(list(range(300, 340)))))[0] == [a]


async def test_router_without_affinity_is_least_loaded(router: AffinityRouter) -> None:
    router.affinity = False
    a, b = replica("a"), replica("b")
    router.on_request_routed(pending([1], session="s", rid="1"), "b", None)
    assert (await router.choose_replicas([a, b], pending([1], session="s")))[0] == [a]


def test_replicas_on_nodes_without_the_tokenizer_dir_get_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's temp dir
    src = tmp_path / "tok"
    src.mkdir()
    (src / "tokenizer.json").write_text('{"x": 1}')
    (src / "tokenizer_config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"weights stay home")
    files = tokenizer_files(str(src))
    assert set(files) == {"tokenizer.json", "tokenizer_config.json"}
    assert local_tokenizer_dir(str(src), files) == str(src)  # this node has it
    copy = Path(local_tokenizer_dir(str(tmp_path / "elsewhere"), files))
    assert copy.parent == tmp_path and (copy / "tokenizer.json").read_text() == '{"x": 1}'
    assert local_tokenizer_dir(str(tmp_path / "elsewhere"), files) == str(copy)  # reused


async def test_a_request_completed_before_it_is_routed_leaves_no_load(
    router: AffinityRouter,
) -> None:
    """Ray Serve registers the completion callback before confirming the routing, so a quick
    call (a replica's ``describe``, the start-up tokenizer check) can complete first. Counting it
    afterwards would leave load that never ends and send every later request elsewhere."""
    a, b = replica("a"), replica("b")
    router.on_request_completed("a", "quick")
    router.on_request_routed(pending([1], rid="quick"), "a", None)
    assert router.load.get("a", 0) == 0
    route(router, [3], "b", "b1")
    route(router, [3], "b", "b2")
    # b served more of the recent requests: a is chosen, as it would not be if the quick call
    # were still counted in flight on it.
    assert (await router.choose_replicas([a, b], pending([2])))[0] == [a]
