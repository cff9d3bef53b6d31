"""``--api-processes N``: N HTTP processes on one port, over one engine core.

One Python process streams a few thousand tokens a second; a GPU serving the 1.3B or 6.7B model
at high concurrency makes more. So, as vLLM's ``--api-server-count`` does, the work of the front
end (HTTP, tokenization, detokenization, streaming) can be spread over N processes:

- This process (the parent) binds the port, starts the engine core with one ZMQ input/output
  pair per API process (vLLM's own launcher, ``launch_core_engines``), spawns the API processes
  (vLLM's ``APIServerProcessManager`` with ``run_api_process`` as the worker) and then only
  watches: an API process or the engine core that dies takes everything down with exit status 1
  (a supervisor restarts the server); SIGTERM or SIGINT drains every API process (each finishes
  its own requests, ``shutdown_timeout``) and then stops the engine, exit status 0.
- Each API process is a whole server (``app.create_app``) whose engine is vLLM's client of that
  shared engine core. Each listens on a socket of its own on the same port (SO_REUSEPORT): the
  kernel hands each new connection to one of them, spread evenly.
- Metrics: Prometheus' multiprocess mode (a directory of per-process files, removed at exit), so
  ``/metrics``, from whichever process answers, sums every process's counters.

Per-key rate limits hold across the processes (``http.quotas.SharedQuotas``: counters in memory
the parent shares with them). What is per process: the in-flight limit
(``max_requests_in_flight`` is shared out) and sessions (a request supersedes the earlier one of
its session only in the same process: an IDE's keep-alive connection stays on one). The server is
ready (``/health`` 200) once every API process is: a shared flag per process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from deepseek_serve.engine import Engine, VLLMEngine, terminate_children
from deepseek_serve.guardian import EngineGuardian
from deepseek_serve.http.auth import KeyRing
from deepseek_serve.http.quotas import SharedQuotas, shared_layout, shared_size
from deepseek_serve.settings import Settings

if TYPE_CHECKING:
    from deepseek_serve.server import ResolvedModel

logger = logging.getLogger("deepseek_serve")

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client in every process
METRICS_DIR_PREFIX = "deepseek-serve-metrics-"  # + the server's pid: whose directory it is


@dataclass(frozen=True, slots=True)
class ApiProcessArgs:
    """What each API process needs to build its server (pickled to it: spawn)."""

    settings: Settings
    model: ResolvedModel
    tokenizer_dir: Path
    sockets: tuple[socket.socket, ...]  # one listening socket per API process, same port
    quota_counters: Any  # multiprocessing.RawArray: per-key rate-limit counters, shared
    quota_lock: Any  # multiprocessing.Lock guarding them
    started: Any  # multiprocessing.RawArray: 1 for each API process whose engine client is up


class _Stop(BaseException):
    """SIGTERM or SIGINT reached the parent. Not an ``Exception``: vLLM's waiting loop logs
    those as failures (and swallows ``KeyboardInterrupt``)."""


def per_process_settings(settings: Settings) -> Settings:
    """One API process's share of the server-wide limits."""
    share = math.ceil(settings.max_requests_in_flight / settings.api_processes)
    return settings.model_copy(update={"max_requests_in_flight": share})


def bind(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` listening sockets on one port (SO_REUSEPORT): the kernel spreads new connections
    evenly over them by address hash. One socket shared by all would go to whichever process
    wakes first: measured 70/30 over a benchmark client's 32 connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one the first got
            sock.listen(2048)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_processes(settings: Settings, model: ResolvedModel, tokenizer_dir: Path) -> int:
    """Run the server as N API processes over one engine core; the exit status."""
    from vllm import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

    n = settings.api_processes
    try:
        sockets = bind(settings.host, settings.port, n)
    except OSError as exc:
        from deepseek_serve.server import StartupError

        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    host, port = sockets[0].getsockname()[:2]
    spawn = multiprocessing.get_context("spawn")  # what vLLM's process manager starts them with
    counters = spawn.RawArray(
        "d", max(1, shared_size(shared_layout(KeyRing.from_settings(settings).keys)))
    )
    quota_lock = spawn.Lock()
    started = spawn.RawArray("b", n)
    remove_stale_metrics_dirs()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ[METRICS_DIR_ENV] = metrics_dir  # before any API process starts

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one drain; a supervisor escalates
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        logger.info("received %s: draining the API processes", signal.Signals(signum).name)
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    guardian: EngineGuardian | None = None
    manager: Any = None
    engines: Any = None
    listeners: Any = None
    code = 0
    try:
        engine = VLLMEngine(settings, model.engine_model, str(tokenizer_dir))
        args = AsyncEngineArgs(**engine.engine_args())
        args._api_process_count, args._api_process_rank = n, -1
        vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        # Before the engine's processes exist: however this process ends, none outlives it.
        guardian = EngineGuardian()
        listeners = bind_engine_zmq_listeners(vllm_config, n)
        logger.info("starting the engine core and %d API processes on http://%s:%d", n, host, port)
        with launch_core_engines(
            vllm_config, Executor.get_class(vllm_config), not args.disable_log_stats,
            listeners.addresses,
        ) as launch:  # fmt: skip
            engines = launch.engine_manager
            manager = APIServerProcessManager(
                listen_address=f"http://{host}:{port}",
                sock=sockets[0],  # unused: each API process listens on its own
                args=ApiProcessArgs(  # type: ignore[arg-type]
                    settings, model, tokenizer_dir, tuple(sockets), counters, quota_lock, started
                ),
                num_servers=n,
                input_listeners=listeners.inputs,
                output_listeners=listeners.outputs,
                target_server_fn=run_api_process,
                tensor_queue=launch.tensor_queue,
            )
            # An API process that dies while the engine starts aborts the start.
            launch.watched_frontend_processes = manager.processes
            # Only the API processes may hold the sockets: one that stays open after its
            # process is gone would take connections nobody accepts.
            for sock in sockets:
                sock.close()
        wait_for_completion_or_failure(api_server_manager=manager, engine_manager=engines)
    except _Stop:
        pass
    except Exception as exc:
        logger.critical("stopping the server: %s", exc)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if manager is not None:
            # SIGTERM to each: it drains (up to shutdown_timeout), then exits.
            manager.shutdown(timeout=settings.shutdown_timeout + 15)
            if code == 0 and any(p.exitcode for p in manager.processes):
                code = 1
        if engines is not None:
            engines.shutdown(timeout=15)
        if guardian is not None:
            # Whatever a stop during start-up left running (the engine core, a worker), then
            # the guardian may leave quietly. Not multiprocessing's resource tracker: our shared
            # lock is unregistered with it at exit.
            from multiprocessing import resource_tracker

            tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
            terminate_children(spare={guardian.pid, tracker or -1})
            guardian.stand_down()
        if listeners is not None:
            listeners.cleanup()  # here, not in its __del__ at interpreter exit (which fails)
            listeners = None
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    logger.log(logging.ERROR if code else logging.INFO, "exiting with status %d", code)
    return code


def remove_stale_metrics_dirs(root: Path | None = None) -> list[Path]:
    """Remove the metrics directories of servers that are gone: one killed outright (SIGKILL,
    the OOM killer) could not remove its own. A directory whose server still runs is kept."""
    import psutil

    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def run_api_process(
    listen_address: str, sock: socket.socket, args: ApiProcessArgs, client: dict[str, Any]
) -> None:
    """One API process (the target vLLM's process manager spawns): a whole server whose engine
    is a client of the parent's engine core."""
    from deepseek_serve.app import create_app
    from deepseek_serve.http.lifecycle import DrainingServer
    from deepseek_serve.http.observability import configure_logging
    from deepseek_serve.server import check_tokenizer, engine_tokenizer_check, uvicorn_config

    index = client["client_index"]
    own = args.sockets[index]
    for other in {sock, *args.sockets} - {own}:
        other.close()  # see serve_processes: a socket held here would outlive its process
    label = f"api {index}"
    configure_logging(args.settings.log_level, args.settings.log_format, process=label)
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(f"deepseek_serve::{label}")
    # The parent checked (and if needed repaired) the tokenizer: load what it settled on.
    settings = per_process_settings(args.settings)
    setup = check_tokenizer(
        settings.model_copy(update={"tokenizer": str(args.tokenizer_dir)}), args.model
    )
    engine = VLLMEngine(settings, args.model.engine_model, str(args.tokenizer_dir), client=client)
    server: DrainingServer | None = None
    failed = False

    def fatal(exc: BaseException) -> None:
        nonlocal failed
        failed = True
        if server is not None:
            server.should_exit = True

    check = engine_tokenizer_check(setup)

    async def started(engine: Engine) -> None:
        await check(engine)
        args.started[index] = 1

    app = create_app(
        settings, engine, setup.prompt_tokenizer, post_start_check=started, on_fatal=fatal
    )
    state = app.state.deepseek
    state.peers_ready = lambda: all(args.started)
    # A key's rate limits hold across all the API processes: counted in the parent's memory.
    state.quotas = SharedQuotas(
        shared_layout(state.keys.keys), args.quota_counters, args.quota_lock
    )
    server = DrainingServer(uvicorn_config(app, settings), state)
    server.run(sockets=[own])
    sys.exit(1 if failed or not server.started else 0)
