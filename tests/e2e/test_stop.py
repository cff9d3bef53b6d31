"""However the server is stopped, no engine process outlives it (issue 16).

vLLM's engine core and worker are child processes of the server. A stop that ends the server
without its engine shutdown (SIGKILL, the OOM killer; for a Ray replica, a SIGTERM to the whole
process group that ends the replica actor first) used to leave them re-parented to init, about
2.4 GiB each with the demo model, ignoring SIGTERM. Each test starts a server in a session of its
own, stops it one way, and then counts the processes of that session (a re-parented process
keeps its session id) and the engine processes it had: none may be left.

SIGTERM to the server alone is the e2e tier's own teardown (tests/e2e/conftest.py), checked on
every run; Ray replicas are checked in test_ray.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from deepseek_serve.demo import build_demo_model
from deepseek_serve.guardian import GRACE_S
from tests.e2e.conftest import ROOT, START_TIMEOUT, free_port, server_command

pytestmark = pytest.mark.e2e


def in_session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return out


def left_behind(server: int, engine: list[psutil.Process], wait: float) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        alive = {p.pid: p for p in engine if p.is_running()}  # checks the start time too
        alive.update({p.pid: p for p in in_session(server)})
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return [f"{pid} {p.name()}" for pid, p in alive.items() if p.is_running()]


def start(root: Path, ray_tmp: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    model = build_demo_model("demo", root / "model")
    port = free_port()
    cmd = server_command(root, model, "stopped", port, extra)
    # A Ray instance of its own (--replicas without --ray-address): in a private temp dir, so
    # it never joins another Ray instance of this machine.
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    with (root / "server.log").open("wb") as log:
        # Its own session and process group, as a shell job, a supervisor or systemd gives it.
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, env=env
        )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.5)


WAYS: dict[str, Callable[[subprocess.Popen[bytes]], None]] = {
    # supervisors that stop a group, `kill -- -PGID`, systemd's default stop
    "SIGTERM to the process group": lambda p: os.killpg(p.pid, signal.SIGTERM),
    # Ctrl-C in a terminal signals the whole foreground group
    "SIGINT to the process group": lambda p: os.killpg(p.pid, signal.SIGINT),
    # the OOM killer, `kill -9`, a supervisor's last resort
    "SIGKILL to the server": lambda p: p.kill(),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_no_engine_process_outlives_the_server(tmp_path: Path, way: str) -> None:
    stop_and_count(tmp_path, way)


def test_no_replica_engine_outlives_a_group_sigterm(tmp_path: Path) -> None:
    """The case of the issue: ``--replicas`` on a Ray instance the server started, SIGTERM to
    the whole group (Ray's processes included, so the replica actor dies before the server's
    shutdown reaches it). Heavy (Ray and one engine): run it alone."""
    stop_and_count(tmp_path, "SIGTERM to the process group", ("--replicas", "1"))


@pytest.mark.parametrize("way", ["SIGTERM to the process group", "SIGKILL to the server"])
def test_no_process_outlives_a_server_with_api_processes(tmp_path: Path, way: str) -> None:
    """``--api-processes 2``: the engine core and both API processes are children of the
    server; a SIGKILL leaves them to the guardian, a group SIGTERM reaches them all at once."""
    stop_and_count(tmp_path, way, ("--api-processes", "2"))


def stop_and_count(root: Path, way: str, extra: tuple[str, ...] = ()) -> None:
    ray_tmp = tempfile.mkdtemp(prefix="dsray-")  # short: Ray's unix sockets live under it
    try:
        stop_and_count_in(root, way, extra, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_and_count_in(root: Path, way: str, extra: tuple[str, ...], ray_tmp: str) -> None:
    proc = start(root, ray_tmp, extra)
    engine = psutil.Process(proc.pid).children(recursive=True)
    names = {p.name() for p in engine}
    assert "VLLM::EngineCore" in names, names
    try:
        WAYS[way](proc)
        proc.wait(timeout=90)
        left = left_behind(proc.pid, engine, wait=GRACE_S + 30)
        assert not left, f"{way}: engine processes outlived the server: {left}"
        if way != "SIGKILL to the server":
            assert proc.returncode in (0, -signal.SIGTERM, -signal.SIGINT), proc.returncode
    finally:
        for p in [*engine, *in_session(proc.pid)]:
            try:
                if p.pid != proc.pid:
                    p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
