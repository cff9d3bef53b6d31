"""The server's life after start-up: watching the engine, and draining on SIGTERM.

- Engine death: ``/health`` turns 503 at once, running streams end with an error frame and
  ``[DONE]`` (their engine iterators raise), new requests get 503, and after
  ``engine_death_exit_delay`` the process exits non-zero so a supervisor restarts it.
- SIGTERM: new requests get 503 (``/health`` too, so load balancers move on) while the ones in
  flight finish, for up to ``shutdown_timeout`` seconds; whatever still runs then is ended with an
  error frame; then uvicorn stops and the engine shuts down. A second SIGTERM/SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from deepseek_serve.errors import APIError, EngineDeadError
from deepseek_serve.http.state import ServerState

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25


async def watch_engine(state: ServerState, on_death: Callable[[BaseException], None]) -> None:
    """Poll the started engine's health; on death mark the server failed, then ``on_death``.
    Engines that restart themselves (replicas on Ray: ``self_healing``) are left to that."""
    if state.engine.self_healing:
        return
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            await state.engine.check_health()
        except APIError as exc:
            error: BaseException = exc
        except Exception as exc:
            error = EngineDeadError(f"The inference engine failed its health check: {exc!r}")
        else:
            continue
        state.failed = error
        state.metrics.engine_healthy.set(0)
        delay = state.settings.engine_death_exit_delay
        logger.critical("the inference engine died; exiting in %.1f s", delay)
        await asyncio.sleep(delay)
        on_death(error)
        return


async def drain(state: ServerState) -> None:
    """Refuse new work, let the running requests finish, end the rest at the deadline."""
    state.draining = True
    timeout = state.settings.shutdown_timeout
    logger.info("draining %d request(s), for up to %.0f s", state.in_flight, timeout)
    deadline = time.monotonic() + timeout
    while state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight:
        ended = await state.engine.end_all()
        logger.warning("shutdown timeout: ended %d engine request(s) still running", ended)
        grace = time.monotonic() + 5.0
        while state.in_flight and time.monotonic() < grace:
            await asyncio.sleep(0.05)


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains before the server stops."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit:
            # A second signal: stop now.
            self.should_exit = self.force_exit = True
            return
        logger.info("received %s: draining", signal.Signals(sig).name)
        loop = asyncio.get_event_loop()
        self._drain_task = loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await drain(self.state)
        finally:
            self.should_exit = True
