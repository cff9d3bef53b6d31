"""A real multi-node Ray cluster on this machine, private to the test run.

Two Ray nodes (head + worker), each with one CPU, so two one-CPU engine replicas must land on
different nodes. Every Ray process is a child of this process and is stopped by
``Cluster.shutdown``; the temp dir and the GCS port are our own, so no other Ray instance on the
machine is touched (never ``ray stop``: it kills every Ray process of the user).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager

import psutil
from ray.cluster_utils import Cluster

from tests.e2e.conftest import free_port

# The raylet reaps the children of a worker that dies, so a killed replica does not leave its
# vLLM engine-core process behind.
SUBREAPER = "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"


# Ray gives a new node a fixed 30 s to register with the GCS (``ray._private.node``, not
# configurable). On a loaded 2-core CI machine that has been missed once (CI of stop 12): the
# cluster is then started again from scratch, once, with new ports and a new temp dir.
START_ATTEMPTS = 2


def _start_up_flake(exc: Exception) -> bool:
    """A failure of Ray's own start-up that a fresh start does not repeat: the 30 s node
    registration timeout, or a GCS server that died before it wrote its log (seen once in the
    benchmark's third cluster of a run: ``FileNotFoundError`` for ``gcs_server.err`` from
    ``ray._private.node._init_gcs_client``)."""
    if "timed out during startup" in str(exc):
        return True
    return isinstance(exc, FileNotFoundError) and "gcs_server" in str(exc)


@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[Cluster]:
    for attempt in range(1, START_ATTEMPTS + 1):
        started = _start(nodes, cpus_per_node)
        try:
            cluster = next(started)
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            if attempt == START_ATTEMPTS or not _start_up_flake(exc):
                raise
            print(f"Ray cluster start-up attempt {attempt} failed ({exc}); starting again")
            continue
        try:
            yield cluster
        finally:
            started.close()
        return


def _start(nodes: int, cpus_per_node: int) -> Generator[Cluster, None, None]:
    """Start the cluster, yield it once, and stop everything it started on close (also when
    start-up itself failed part-way)."""
    # Short path: Ray puts unix sockets under it (107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="dsray-")
    os.makedirs(os.path.join(temp_dir, "ray"))
    env = {SUBREAPER: "true", "RAY_TMPDIR": temp_dir}  # RAY_TMPDIR: Ray's address file too
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    cluster = Cluster(initialize_head=False, shutdown_at_exit=True)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        for i in range(nodes):
            args: dict[str, object] = {
                "num_cpus": cpus_per_node,
                "resources": {f"test_node_{i}": 1},
                "object_store_memory": 80 * 1024 * 1024,
            }
            if i == 0:
                args.update(
                    gcs_server_port=free_port(),
                    temp_dir=os.path.join(temp_dir, "ray"),
                    include_dashboard=False,
                    dashboard_agent_listen_port=free_port(),
                )
            cluster.add_node(**args)  # type: ignore[arg-type]
        cluster.wait_for_nodes()
        yield cluster
    finally:
        # Not Cluster.shutdown: its graceful drain waits 30 s per node for nothing here.
        ours = [p for p in me.children(recursive=True) if p.pid not in before]
        for node in [*cluster.worker_nodes, cluster.head_node]:
            if node is not None:
                cluster.remove_node(node, allow_graceful=False)
        # Agents the raylets started themselves are not stopped with them (nor is what a node
        # that failed to register started): stop what is left of the processes added below us.
        _, alive = psutil.wait_procs(ours, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp_dir, ignore_errors=True)
        restore_sigchld()


def restore_sigchld() -> None:
    """A Ray driver in this process (with the subreaper option above) ignores SIGCHLD at the C
    level, which Python's ``signal.getsignal`` does not show: children are then reaped by the
    kernel and ``Popen.wait`` reports 0 for every exit status. Later tests check exit statuses.
    It also makes this process a child subreaper (``prctl``), for good: orphaned processes of
    later tests' servers would then become this process's children instead of init's, which
    hides what a real supervisor sees (tests/e2e/test_stop.py counts exactly those)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
