"""Engine processes never outlive the process that started them.

vLLM runs its engine core (and, per GPU, a worker) as child processes. When the process that
owns them stops without shutting the engine down (SIGKILL, the OOM killer, a Ray replica killed
outright, or a SIGTERM to a whole process group that ends Ray's replica actor before its
shutdown runs), they are re-parented to init and keep their memory (GiBs each; on GPUs, the
memory the next start needs). They do not end themselves: the engine core's SIGTERM handler
only asks its loop to drain, and its teardown then waits on peers that are gone, so only
SIGKILL ends it.

``EngineGuardian`` is a small process in a session of its own (so a signal to the owner's
process group or a Ctrl-C does not reach it), and no child of the owner (Ray kills a dead
worker's children, and only those: the engine core's own workers were left). While the owner
lives, the guardian notes every process that appears below the owner after the guardian started
(the engine's, by construction; by pid and start time, so a reused pid is never mistaken for
one). When the owner is gone (or closes the guardian's stdin without a ``stop``) it gives those
processes a short grace to exit on their own, then SIGKILLs the rest. After a clean engine
shutdown the owner sends ``stop`` and the guardian leaves quietly.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

GRACE_S = 3.0  # how long engine processes may take to exit on their own once the owner is gone
POLL_S = 0.5  # how often the guardian looks for new engine processes
TITLE = "deepseek_serve::EngineGuardian"  # its name in ps and top

# Runs in a bare interpreter (no deepseek_serve import: it starts in about 0.1 s).
_SCRIPT = r"""
import os, select, signal, sys, time
import psutil

try:
    import setproctitle  # vLLM's dependency: names its processes VLLM::EngineCore ...
    setproctitle.setproctitle(sys.argv[3])
except ImportError:
    pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)  # it ends on its own, once its work is done
grace, poll = float(sys.argv[1]), float(sys.argv[2])
owner = psutil.Process(int(sys.argv[4]))
# Fork once more and let the first process exit: the guardian is then no child of the owner,
# which matters in a Ray worker, whose direct children Ray kills when the worker exits.
if os.fork() > 0:
    os._exit(0)
me = os.getpid()
def below():
    try:
        return {p.pid: p for p in owner.children(recursive=True) if p.pid != me}
    except psutil.Error:
        return {}
before = {(pid, p.create_time()) for pid, p in below().items()}
seen = {}
def look():
    for pid, p in below().items():
        try:
            if (pid, p.create_time()) not in before:
                seen.setdefault(pid, p)
        except psutil.Error:
            pass
stdin = sys.stdin.buffer.raw
sys.stdout.write("ready %d\n" % me)
sys.stdout.flush()
def owner_alive():
    try:
        return owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
data = b""
# The owner's liveness is polled, not read from the pipe's end alone: a child the owner forked
# holds a copy of the pipe's write end, which would keep it open after the owner died.
while owner_alive():
    look()
    ready, _, _ = select.select([stdin], [], [], poll)
    if not ready:
        continue
    chunk = os.read(stdin.fileno(), 64)
    if not chunk:
        break  # closed without "stop": the engine was dropped without its shutdown
    data += chunk
    if b"stop" in data:
        sys.exit(0)
alive = {}
for p in seen.values():
    try:
        if p.is_running():  # is_running checks the start time too
            alive[p.pid] = p
            # and what they started since the last look (a worker of the engine core)
            alive.update((c.pid, c) for c in p.children(recursive=True) if c.pid != me)
    except psutil.Error:
        pass
alive = list(alive.values())
if alive:
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
    sys.stderr.write(
        "deepseek_serve guardian: the engine's owner %d is gone; killed %d engine "
        "process(es) that outlived it: %s\n"
        % (owner.pid, len(alive), ", ".join(str(p.pid) for p in alive))
    )
"""


class EngineGuardian:
    """Start before the engine starts (it watches what appears below this process from then
    on); ``stand_down`` after the engine shut down cleanly."""

    def __init__(self, grace: float = GRACE_S, poll: float = POLL_S) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(grace), str(poll), TITLE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # out of reach of signals to our process group
        )
        assert self._proc.stdout is not None
        # Wait until it has noted what ran below us before the engine, so that is left alone.
        ready = self._proc.stdout.readline().split()
        self._proc.wait()  # the first process: it exits once it has forked the guardian
        if len(ready) != 2 or ready[0] != b"ready":
            raise RuntimeError("the engine guardian process did not start")
        self.pid = int(ready[1])

    def stand_down(self) -> None:
        """The engine shut down cleanly: the guardian leaves without killing anything."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(b"stop\n")
                stdin.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
