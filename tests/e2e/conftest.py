"""One real server over the real vLLM CPU engine for the whole test run.

Its model is a tiny random-weight checkpoint whose tokenizer files are the hub's ORIGINAL
DeepSeek-Coder ones, which transformers 5 mis-loads: every test here runs through the start-up
repair, and the golden-id tests prove the repair reached the engine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from deepseek_serve.demo import build_demo_model
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
MODEL_NAME = "tiny-coder"
START_TIMEOUT = 300


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is the e2e tier (``-m e2e`` / ``-m "not e2e"``), whether or
    not its file says so."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model_dir: Path
    expect_failure: bool = False  # a test killed its engine: the server must exit non-zero

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests_in_engine(self) -> int:
        r = httpx.get(f"{self.base_url}/health", timeout=5)
        assert r.status_code == 200, r.text
        return int(r.json()["requests_in_engine"])

    def wait_engine_idle(self, timeout: float = 5.0) -> float:
        start = time.monotonic()
        while self.requests_in_engine() != 0:
            assert time.monotonic() - start < timeout, "engine still holds requests"
            time.sleep(0.02)
        return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int, grace: float) -> bool:
    import psutil

    try:
        psutil.Process(pid).wait(timeout=grace)
        return False
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        return True


def server_command(
    root: Path, model: Path, name: str, port: int, extra: tuple[str, ...] = ()
) -> list[str]:
    """``deepseek-serve`` on the CPU config, as a user would start it."""
    return [
        sys.executable, "-m", "deepseek_serve",
        "--config", str(ROOT / "configs" / "cpu.yaml"),
        "--model", str(model),
        "--served-model-name", name,
        "--port", str(port),
        "--cache-dir", str(root / "cache"),
        *extra,
    ]  # fmt: skip


def start_server(
    root: Path, model: Path, name: str, extra: tuple[str, ...] = ()
) -> Iterator[LiveServer]:
    port = free_port()
    log_path = root / "server.log"
    cmd = server_command(root, model, name, port, extra)
    # Exit statuses are asserted below: make sure the kernel keeps them for us (an in-process
    # Ray driver ignores SIGCHLD; see tests/e2e/ray_cluster.py).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    live = LiveServer(f"http://127.0.0.1:{port}", proc, log_path, model)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{live.log()[-4000:]}")
            try:
                if httpx.get(f"{live.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {START_TIMEOUT}s:\n{live.log()[-4000:]}")
            time.sleep(0.5)
        yield live
    finally:
        children = _children(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        leftover = [pid for pid in children if _alive(pid, grace=10.0)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    if live.expect_failure:
        assert proc.returncode not in (0, -signal.SIGTERM), "a dead engine must fail the process"
    else:
        assert proc.returncode == 0, f"server exited with {proc.returncode} after SIGTERM"
        # An object that outlives shutdown has its __del__ run at interpreter exit, when its
        # module is half torn down: Python prints "Exception ignored in ..." for it.
        tail = live.log()[-20000:]
        assert "Exception ignored in" not in tail, tail
    assert not leftover, f"engine processes left behind after SIGTERM: {leftover}"


# The session's one v1 server. tests/compat imports the ``server`` fixture into its own
# conftest, which makes a second fixture definition; both hand out the same server, started by
# whichever asks first and stopped by that one (session fixtures end in reverse order).
_SHARED: dict[str, LiveServer] = {}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if "v1" in _SHARED:
        yield _SHARED["v1"]
        return
    root = tmp_path_factory.mktemp("e2e")
    model = build_demo_model(
        "demo", root / "tiny-coder", tokenizer_dir=FIXTURES / "deepseek-coder-hub-layout"
    )
    for live in start_server(root, model, MODEL_NAME):
        _SHARED["v1"] = live
        try:
            yield live
        finally:
            del _SHARED["v1"]


@pytest.fixture(scope="session")
def server_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A tiny DeepSeek-Coder-V2 (MLA + MoE) checkpoint; started only if a test asks for it."""
    root = tmp_path_factory.mktemp("e2e-v2")
    model = build_demo_model("demo-v2", root / "tiny-coder-v2-lite-instruct")
    yield from start_server(root, model, "tiny-coder-v2")


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of the test's own, for tests that stop it or kill its engine (the shared ones
    must survive any test order, ``-k`` selection or xdist split)."""
    model = build_demo_model("demo", tmp_path / "tiny-coder")
    yield from start_server(tmp_path, model, MODEL_NAME, extra=("--shutdown-timeout", "20"))


@pytest.fixture(scope="session")
def client(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
