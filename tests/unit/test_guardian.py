"""The engine guardian (deepseek_serve/guardian.py), with stand-in engine processes: what
appears below its owner after it started dies with the owner, whatever the owner dies of;
nothing dies after a clean stand-down. The real engine: tests/e2e/test_stop.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

# An owner that starts a guardian, then a stand-in engine core (which ignores SIGTERM, as a
# stuck vLLM engine core does) with a child of its own (as the engine core's worker), prints
# their pids and waits. Told "stand down" on stdin, it stands the guardian down first.
OWNER = r"""
import subprocess, sys, time
from deepseek_serve.guardian import EngineGuardian
guardian = EngineGuardian(grace=0.5, poll=0.1)
core = subprocess.Popen([sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "w = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
    "print(w.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
worker = int(core.stdout.readline())
print(guardian.pid, core.pid, worker, flush=True)
if sys.stdin.readline().strip() == "stand down":
    guardian.stand_down()
    print("stood down", flush=True)
time.sleep(600)
"""


def start_owner() -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert owner.stdout is not None
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    return owner, [psutil.Process(pid) for pid in pids]


def gone(procs: list[psutil.Process], within: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=within)
    for p in alive:
        p.kill()
    return not alive


@pytest.mark.parametrize("how", ["SIGKILL", "group SIGTERM"])
def test_what_the_owner_started_dies_with_it(how: str) -> None:
    owner, (guardian, core, worker) = start_owner()
    assert guardian.ppid() != owner.pid  # no child of the owner: Ray kills those
    assert os.getsid(guardian.pid) != os.getsid(owner.pid)  # group signals miss it
    time.sleep(0.5)  # the guardian looks every 0.1 s here; a real engine has run for long
    if how == "SIGKILL":
        owner.kill()
    else:
        os.killpg(owner.pid, signal.SIGTERM)  # the stand-ins ignore it, as vLLM's do
    owner.wait(10)
    assert gone([core, worker], within=10), "stand-in engine processes outlived their owner"
    assert gone([guardian], within=5)


def test_a_guardian_stood_down_kills_nothing() -> None:
    owner, (guardian, core, worker) = start_owner()
    try:
        assert owner.stdin is not None and owner.stdout is not None
        owner.stdin.write("stand down\n")
        owner.stdin.flush()
        assert owner.stdout.readline().strip() == "stood down"
        assert gone([guardian], within=5)
        owner.kill()
        owner.wait(10)
        time.sleep(1.0)  # more than the guardian's grace and poll
        assert core.is_running() and worker.is_running()
    finally:
        for p in (worker, core):
            if p.is_running():
                p.kill()
        if owner.poll() is None:
            owner.kill()
