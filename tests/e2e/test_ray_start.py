"""``--replicas`` start-up that cannot succeed says so (issue 16).

Replicas that ask for a GPU on a cluster without one used to wait forever: ``/health`` 503, and
the server's log silent while Ray's controller logged the resources asked and available in its
own files. No engine loads here (no replica is ever scheduled), so this is the light Ray test.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from deepseek_serve.demo import build_demo_model
from tests.e2e.conftest import ROOT, free_port, server_command
from tests.e2e.ray_cluster import local_cluster

pytestmark = pytest.mark.e2e

DEADLINE_S = 20


def test_replicas_no_node_can_hold_are_reported_at_once_and_fail_start_up(tmp_path: Path) -> None:
    model = build_demo_model("demo", tmp_path / "model")
    port = free_port()
    log_path = tmp_path / "server.log"
    with local_cluster(nodes=1, cpus_per_node=1) as cluster:
        extra = (
            "--replicas", "2",
            "--replica-gpus", "1",  # what a GPU deployment asks for, on a cluster without GPUs
            "--ray-address", cluster.address,
            "--replica-schedule-timeout", str(DEADLINE_S),
        )  # fmt: skip
        cmd = server_command(tmp_path, model, "unschedulable", port, extra)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            # The reason reaches our log within seconds of deploying, not after Ray's 30 s.
            deadline = time.monotonic() + 180
            while "deploying" not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            deployed = time.monotonic()
            while "No node of the Ray cluster" not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() - deployed < 15, log_path.read_text()[-3000:]
                time.sleep(0.2)
            reported = time.monotonic() - deployed
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 503
            # ... and start-up fails after the deadline, with the reason, exit status 1.
            code = proc.wait(timeout=DEADLINE_S + 120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text(errors="replace")
    assert code == 1, text[-3000:]
    assert reported < DEADLINE_S
    line = next(line for line in text.splitlines() if "No node of the Ray cluster" in line)
    assert "(CPU 1, GPU 1)" in line and "GPU 0" in line and "--replica-gpus 0" in line
    assert f"no engine replica could be scheduled in {DEADLINE_S}s" in text
