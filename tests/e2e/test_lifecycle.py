"""Stopping the server while its engine is still starting leaves no engine processes behind
(a pod terminated while loading a checkpoint must not keep the accelerators busy)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

from deepseek_serve.demo import build_demo_model
from deepseek_serve.guardian import TITLE as GUARDIAN_TITLE
from tests.e2e.conftest import ROOT, free_port, server_command


def engine_pids(server: int) -> set[int]:
    """The server's descendants but its engine guardian (which it starts before the engine)."""
    return {
        p.pid
        for p in psutil.Process(server).children(recursive=True)
        if not p.name().startswith(GUARDIAN_TITLE[:15])  # the kernel keeps 15 characters
    }


def test_sigterm_during_engine_start_leaves_no_orphans(tmp_path: Path) -> None:
    model = build_demo_model("demo", tmp_path / "model")
    cmd = server_command(tmp_path, model, "doomed", free_port())
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while not seen:  # wait until the engine core has been spawned
            assert time.monotonic() < deadline and proc.poll() is None
            seen = engine_pids(proc.pid)
            time.sleep(0.2)
        time.sleep(1.0)
        seen |= engine_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)
    alive = [
        pid
        for pid in seen
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    for pid in alive:
        psutil.Process(pid).kill()
    assert not alive, (
        f"engine processes outlived the server: {alive}\n"
        + (tmp_path / "server.log").read_text()[-3000:]
    )
