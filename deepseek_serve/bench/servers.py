"""Servers the benchmark can start itself, each in its own process group so that stopping it stops
exactly what it started (its engine core included).

Target names: ``ours`` (``deepseek-serve``), ``vllm`` (vLLM's own OpenAI server on the same
checkpoint), ``instant`` (our HTTP layer over an engine that streams instantly) and
``starlette`` (a bare Starlette SSE endpoint streaming the same chunks); anything else is a URL.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTABLE = ("ours", "vllm", "instant", "starlette")  # and instant:N, N processes of instant


def startable(name: str) -> bool:
    kind, sep, processes = name.partition(":")
    if not sep:
        return name in STARTABLE
    return kind == "instant" and processes.isdigit() and 1 <= int(processes) <= 64


# vLLM's server on CPU, configured as configs/cpu.yaml configures ours.
VLLM_CPU_ARGS = (
    "--enforce-eager --max-model-len 4096 --gpu-memory-utilization 0.3 --dtype bfloat16"
    " --kv-cache-memory-bytes 1073741824"
)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    model: str = "demo"  # ours: --model; vllm: the same checkpoint's directory
    served_name: str = "demo"
    ours_config: str | None = None  # default: configs/cpu.yaml when present
    ours_args: str = ""
    vllm_args: str = VLLM_CPU_ARGS
    cpus: dict[str, str] = field(default_factory=dict)  # target name -> taskset cpu list
    log_dir: Path = Path(".")
    start_timeout: float = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_dir(model: str) -> str:
    """The checkpoint directory for vLLM: demo names are built (once) like ``deepseek-serve``."""
    from deepseek_serve.demo import DEMOS, build_demo_model

    return str(build_demo_model(model)) if model in DEMOS else model


def command(name: str, port: int, opts: ServerOptions) -> list[str]:
    py = sys.executable
    if name == "ours":
        config = opts.ours_config
        if config is None and (REPO / "configs" / "cpu.yaml").is_file():
            config = str(REPO / "configs" / "cpu.yaml")
        cmd = [py, "-m", "deepseek_serve", "--model", opts.model, "--port", str(port)]
        cmd += ["--served-model-name", opts.served_name]
        if config:
            cmd += ["--config", config]
        return cmd + shlex.split(opts.ours_args)
    if name == "vllm":
        cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir(opts.model)]
        if "--api-server-count" in opts.vllm_args:
            # Only ``vllm serve`` starts several API servers; the module above ignores the flag.
            cmd = [py, "-m", "deepseek_serve.bench.vllm_serve", model_dir(opts.model)]
        cmd += ["--served-model-name", opts.served_name, "--port", str(port)]
        return cmd + shlex.split(opts.vllm_args)
    kind, _, processes = name.partition(":")
    if kind in ("instant", "starlette") and (not processes or kind == "instant"):
        cmd = [py, "-m", "deepseek_serve.bench.ceiling", kind, "--port", str(port),
               "--served-model-name", opts.served_name]  # fmt: skip
        return cmd + (["--processes", processes] if processes else [])
    raise ValueError(f"cannot start {name!r}; startable: {', '.join(STARTABLE)}")


@dataclass
class RunningServer:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) used so far by the API side (the server's own process, and
        its API processes when it runs several: ``--api-processes``, vLLM's
        ``--api-server-count``) and by the engine side (every other descendant: engine core,
        workers): a measure of work done that does not depend on how busy the machine is."""
        import psutil

        def used(proc: psutil.Process) -> float:
            try:
                t = proc.cpu_times()
                return float(t.user + t.system)
            except psutil.Error:
                return 0.0

        try:
            top = psutil.Process(self.process.pid)
            children = top.children(recursive=True)
        except psutil.Error:
            return 0.0, 0.0
        api = [c for c in children if is_api_process(c)]
        return used(top) + sum(map(used, api)), sum(used(c) for c in children if c not in api)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's own process group, then SIGKILL what is left of it."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def is_api_process(proc: Any) -> bool:
    """One of several API processes under a server: ours (``deepseek_serve::api N``) or vLLM's
    (``VLLM::APIServer_N``, spawned as ``ApiServer_N``)."""
    try:
        name = proc.name()
        title = " ".join(proc.cmdline()[:1])
    except Exception:
        return False
    return any(
        mark in f"{name} {title}" for mark in ("deepseek_serve::api", "APIServer", "ApiServer")
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start(name: str, opts: ServerOptions) -> RunningServer:
    port = free_port()
    cmd = command(name, port, opts)
    if name in opts.cpus:
        cmd = ["taskset", "-c", opts.cpus[name], *cmd]
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = opts.log_dir / f"server-{name}-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
    server = RunningServer(name, f"http://127.0.0.1:{port}", proc, log_path)
    print(f"starting {name}: {shlex.join(cmd)} (log: {log_path})", file=sys.stderr)
    return server


def wait_ready(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(server.base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} not healthy after {timeout:.0f}s ({server.log_path})"
            )
        time.sleep(0.5)
