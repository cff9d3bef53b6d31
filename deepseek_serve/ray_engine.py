"""Engine replicas on Ray Serve, behind the same ``Engine`` contract as one local engine.

``--replicas N`` deploys a Ray Serve application of N ``EngineReplica``s, each one ``VLLMEngine``
with its own ``tensor_parallel_size`` GPUs, reserved together on one node by a per-replica
placement group. Ray Serve owns the replicas: it starts them, health-checks them (our
``check_health``), replaces the ones that die and autoscales between ``min_replicas`` and
``max_replicas``. ``RayEngine`` is what the HTTP layer gets instead of a ``VLLMEngine``: it forwards
``generate`` to a streaming deployment handle, so ``create_app`` and the API do not change.

Why not make the Starlette app a Serve ingress: the HTTP server stays this process (uvicorn, no
Serve proxy hop), tokenization and validation stay in front of the engines, and the only thing
Ray adds to a request is one handle call to the replica. Each engine output crosses as its own
streamed item (no ``serve.batch``), so tokens are not held back. Closing the stream cancels the
handle call, which cancels the generator on the replica, which aborts the request in vLLM.

Routing is ``ray_router.AffinityRouter`` (session / prefix affinity, else least-loaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deepseek_serve.engine import (
    Capacity,
    Engine,
    EngineOutput,
    ModelLimits,
    SamplingOptions,
    TokenizerCheck,
    VLLMEngine,
)
from deepseek_serve.errors import (
    APIError,
    EngineDeadError,
    InternalError,
    ReplicaDiedError,
    ServiceUnavailableError,
)
from deepseek_serve.ray_start import (
    dead_ray_processes,
    read_start_view,
    replica_bundle,
    vllm_uses_gpus,
    wait_running,
)

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from deepseek_serve.settings import Settings

logger = logging.getLogger(__name__)

DEPLOYMENT = "EngineReplica"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "config.json",
    "generation_config.json",
)
# Read by Ray Serve in the replica actor when it starts. Our methods run on the replica's own
# event loop instead of a second thread's (one thread hop less per request and per streamed
# item), and its request log is written in batches instead of flushed after every request:
# part of Serve's "throughput optimized" profile (benchmarks/README.md has what they save).
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}
STATUS_TTL_S = 1.0  # /health asks the Serve controller at most this often
RETRIES = 3  # a request that reached a dead replica before any output is sent elsewhere


class EngineReplica:
    """One vLLM engine in a Ray Serve replica actor (the class Serve instantiates)."""

    async def __init__(  # type: ignore[misc]  # Ray actors may have an async constructor
        self,
        settings: Settings,
        model_path: str,
        tokenizer_path: str,
        tokenizer_files: dict[str, bytes] | None = None,
    ) -> None:
        if Path(model_path).is_absolute() and not Path(model_path).is_dir():
            raise FileNotFoundError(
                f"model directory {model_path} is not on this node: put it at the same path on "
                "every node (e.g. a shared filesystem) or serve a hub id"
            )
        # The (possibly repaired) tokenizer lives in the front server's cache: nodes without
        # that directory get a copy of its files.
        tokenizer_path = local_tokenizer_dir(tokenizer_path, tokenizer_files or {})
        if settings.tensor_parallel_size > 1 and "distributed_executor_backend" not in (
            settings.engine_args
        ):
            # The TP workers are this actor's child processes on its GPUs (all in its placement
            # group bundle, so on one node); vLLM would otherwise pick its Ray executor here.
            engine_args = {**settings.engine_args, "distributed_executor_backend": "mp"}
            settings = settings.model_copy(update={"engine_args": engine_args})
        self.engine = VLLMEngine(settings, model_path, tokenizer_path)
        await self.engine.start()
        # What this replica served, for the routing tests and the prefix-cache benchmark.
        self.served = self.prompt_tokens = self.cached_tokens = 0

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        self.served += 1
        self.prompt_tokens += len(prompt_token_ids)
        cached = 0
        try:
            async for out in self.engine.generate(request_id, prompt_token_ids, options):
                cached = max(cached, out.num_cached_tokens)
                yield out
        finally:
            self.cached_tokens += cached

    async def limits(self) -> ModelLimits:
        return self.engine.limits

    async def check_tokenizer(self, check: TokenizerCheck) -> dict[str, Any]:
        """``check`` against the tokenizer this replica's vLLM loaded."""
        from ray import serve

        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "problems": await self.engine.check_tokenizer(check) or [],
        }

    async def check_health(self) -> None:
        """Serve calls this every few seconds; raising makes it replace the replica."""
        await self.engine.check_health()

    async def describe(self) -> dict[str, Any]:
        """Where this replica runs (tests and operators)."""
        import psutil
        import ray
        from ray import serve

        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "engine_pids": [p.pid for p in psutil.Process().children(recursive=True)],
            "unfinished": self.engine.num_unfinished_requests(),
            "served": self.served,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "block_size": self.engine.llm.vllm_config.cache_config.block_size,
        }

    async def __del__(self) -> None:  # Serve awaits it on graceful shutdown
        await self.engine.shutdown()


def _quiet_ray_signals() -> None:
    """Ray's C++ failure-signal handler turns uvicorn's graceful SIGTERM into an abort (and a
    local Ray instance is then never shut down); this process's signals belong to uvicorn. Ray
    reads the switch when it is first imported."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    # No implicit ray.init: a Serve call after our ray.shutdown() (a /health poll during the
    # shutdown) would otherwise start a new local Ray instance as the process exits.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")


def tokenizer_files(path: str) -> dict[str, bytes]:
    """The tokenizer files of directory ``path`` (a few MB), for replicas on other nodes."""
    root = Path(path)
    return {name: (root / name).read_bytes() for name in TOKENIZER_FILES if (root / name).is_file()}


def local_tokenizer_dir(path: str, files: dict[str, bytes]) -> str:
    """``path`` if this node has it, else a copy of ``files`` in a content-named directory."""
    if Path(path).is_dir() or not files:
        return path
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    target = Path(tempfile.gettempdir()) / f"deepseek_serve-tokenizer-{digest.hexdigest()[:16]}"
    if not (target / "tokenizer.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        for name, data in files.items():
            (staging / name).write_bytes(data)
        try:
            staging.rename(target)
        except OSError:  # another replica on this node wrote the same copy first
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def ray_missing() -> str | None:
    """Why ``--replicas`` cannot run here, if it cannot (imports Ray for this process)."""
    _quiet_ray_signals()
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        return f"--replicas runs on Ray Serve; install the 'ray' extra ({exc})"
    return None


def app_name(settings: Settings) -> str:
    """One Serve application per front server (model name and port)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"deepseek_serve-{settings.model_name}-{settings.port}")


def deployment_options(settings: Settings, uses_gpus: bool | None = None) -> dict[str, Any]:
    """``@serve.deployment`` options: replica count or autoscaling, placement and routing."""
    bundle = replica_bundle(settings, uses_gpus)
    gpus = bundle.get("GPU", 0.0)
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        # The replica actor takes the whole bundle; vLLM's TP workers are its child processes
        # on the same node and see exactly these GPUs.
        "ray_actor_options": {
            "num_cpus": settings.replica_cpus,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": dict(REPLICA_ENV)},
        },
        "placement_group_bundles": [bundle],
        "placement_group_strategy": "STRICT_PACK",
        # vLLM batches itself: let the router send it as much as it can schedule.
        "max_ongoing_requests": settings.max_num_seqs or 256,
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": 20.0,
        "request_router_config": {
            "request_router_class": "deepseek_serve.ray_router:AffinityRouter",
            "request_router_kwargs": {
                "affinity": settings.route_affinity,
                "balance": settings.route_balance,
            },
        },
    }
    if settings.min_replicas is not None and settings.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas,
            "max_replicas": settings.max_replicas,
            "initial_replicas": settings.replicas,
            "target_ongoing_requests": settings.target_requests_per_replica,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


@dataclass
class RayEngine(Engine):
    """``Engine`` over N ``EngineReplica``s of a Ray Serve application."""

    # Ray Serve replaces dead replicas itself: the server must not exit when none is running.
    self_healing: ClassVar[bool] = True

    settings: Settings
    model_path: str
    tokenizer_path: str
    limits: ModelLimits = field(default_factory=lambda: ModelLimits(0, 0))
    _handle: DeploymentHandle[Any] | None = None
    _generate: DeploymentHandle[Any] | None = None  # the streaming, by-value view of _handle
    _streams: dict[str, Any] = field(default_factory=dict)  # request id -> response generator
    _status: tuple[float, Capacity] | None = None
    _owns_ray: bool = False
    _closed: bool = False
    _bundle: dict[str, float] = field(default_factory=dict)  # what one replica asks Ray for

    @property
    def name(self) -> str:
        return app_name(self.settings)

    async def start(self) -> None:
        # Connecting to Ray and deploying take seconds: a thread keeps /health answering.
        handle = await asyncio.to_thread(self._deploy)
        # Serve's router on this event loop instead of a thread of its own: one hop less per
        # request and per streamed item (Serve's "throughput optimized" setting; it needs the
        # running loop, so here and not in the thread).
        handle._init(_run_router_in_separate_loop=False)  # type: ignore[no-untyped-call]
        self._handle = handle
        # Outputs by value over the replicas' inter-deployment gRPC servers, plain pickle (our
        # types are importable on every node): a streamed item costs about a third of one sent
        # through Ray's object store as a by-reference generator item.
        self._generate = handle.options(
            stream=True,
            method_name="generate",
            _by_reference=False,
            request_serialization="pickle",
            response_serialization="pickle",
        )
        await wait_running(
            lambda: read_start_view(self.name, DEPLOYMENT, self._bundle),
            self.settings.replica_schedule_timeout,
            lambda: self._closed,
        )
        if self._closed:
            raise EngineDeadError("The server shut down while the replicas were starting.")
        self.limits = await self._handle.limits.remote()

    def _deploy(self) -> DeploymentHandle[Any]:
        _quiet_ray_signals()
        import ray
        from ray import serve

        from deepseek_serve.ray_router import AffinityRouter  # noqa: F401  (importable here)

        if not ray.is_initialized():
            self._owns_ray = self.settings.ray_address is None
            ray.init(address=self.settings.ray_address, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        deployment: Any = serve.deployment(EngineReplica)
        uses_gpus = vllm_uses_gpus()
        self._bundle = replica_bundle(self.settings, uses_gpus)
        replica = deployment.options(**deployment_options(self.settings, uses_gpus))
        model = Path(self.model_path)
        model_path = str(model.resolve()) if model.is_dir() else self.model_path
        app = replica.bind(
            self.settings, model_path, self.tokenizer_path, tokenizer_files(self.tokenizer_path)
        )
        logger.info(
            "deploying %s: %s on Ray at %s",
            self.name,
            f"{self.settings.replicas} replica(s)"
            if self.settings.min_replicas is None
            else f"{self.settings.min_replicas}-{self.settings.max_replicas} replicas",
            ray.get_runtime_context().gcs_address,
        )
        # Not waiting here for the replicas to run: _wait_running does, and says why not.
        return serve._run(app, name=self.name, route_prefix=None, _blocking=False)

    @property
    def handle(self) -> DeploymentHandle[Any]:
        if self._handle is None:
            raise EngineDeadError("The inference engine replicas are still starting.")
        return self._handle

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        for attempt in range(RETRIES + 1):
            if self._generate is None:
                raise EngineDeadError("The inference engine replicas are still starting.")
            stream: Any = self._generate.remote(request_id, prompt_token_ids, options)
            self._streams[request_id] = stream
            sent = finished = False
            try:
                async for out in stream:
                    sent, finished = True, out.finished
                    yield out
                return
            except Exception as exc:  # not CancelledError/GeneratorExit: those cancel, below
                error = _as_api_error(exc)
                if isinstance(error, ReplicaDiedError) and not sent and attempt < RETRIES:
                    # Routed to a replica that died before it answered: nothing was sent, so
                    # another replica can take the request as if it were new.
                    logger.warning(
                        "request %s: replica died before answering; retrying", request_id
                    )
                    continue
                raise error from exc
            finally:
                self._streams.pop(request_id, None)
                if not finished:
                    stream.cancel()  # cancels the replica's generator: vLLM aborts the request

    async def abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            stream.cancel()

    async def check_tokenizer(self, check: TokenizerCheck) -> list[str] | None:
        """Every running replica loaded its own tokenizer: each must pass ``check``."""
        answers = await self._ask_every_replica("check_tokenizer", check)
        return [f"replica {a['replica']}: {p}" for a in answers for p in a["problems"]]

    async def capacity(self) -> Capacity:
        """Running replicas against the number wanted (cached for ``STATUS_TTL_S``)."""
        now = time.monotonic()
        if self._closed:  # shut down (Ray may be gone): no more questions to it
            return Capacity(running=0, desired=self.settings.replicas, states={})
        if self._status is None or now - self._status[0] > STATUS_TTL_S:
            self._status = (now, await asyncio.to_thread(self._read_status))
        return self._status[1]

    def _read_status(self) -> Capacity:
        from ray import serve

        app = serve.status().applications.get(self.name)
        deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
        states = {
            str(getattr(k, "value", k)): v
            for k, v in (deployment.replica_states if deployment else {}).items()
        }
        desired = self.settings.replicas
        if self.settings.min_replicas is not None:
            desired = max(self.settings.min_replicas, 1)
        return Capacity(running=states.get("RUNNING", 0), desired=desired, states=states)

    async def check_health(self) -> None:
        if self._handle is None or (await self.capacity()).running == 0:
            raise EngineDeadError("No engine replica is running.")

    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    async def replicas(self) -> list[dict[str, Any]]:
        """Where the replicas run: one ``describe`` per running replica (by asking until every
        replica answered; for tests and operators)."""
        return await self._ask_every_replica("describe")

    async def _ask_every_replica(self, method: str, *args: Any) -> list[dict[str, Any]]:
        """One answer (a dict with ``replica``) per running replica: the router picks the
        replica, so ask until each has answered."""
        running = (await self.capacity()).running
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(50 * max(running, 1)):
            info = await getattr(self.handle, method).remote(*args)
            seen[info["replica"]] = info
            if len(seen) >= running:
                break
        return list(seen.values())

    async def shutdown(self) -> None:
        self._closed = True
        for stream in list(self._streams.values()):
            stream.cancel()
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        if dead := (dead_ray_processes() if self._owns_ray else []):
            # A signal to our whole process group also ended the Ray instance we started: every
            # Serve call would wait 60 s for a GCS that is gone, then abort the process. Its
            # replicas' engines are ended by their guardians (deepseek_serve/guardian.py).
            logger.warning(
                "the local Ray instance's processes were stopped with ours (%s): not deleting "
                "the Serve application",
                ", ".join(dead),
            )
            ray.shutdown()
            return
        try:
            serve.delete(self.name)  # only our application: the cluster may serve others
        except Exception as exc:
            logger.warning("could not delete the Serve application %s: %s", self.name, exc)
        if self._owns_ray:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()  # of a cluster we joined: only disconnects this process


def _as_api_error(exc: BaseException) -> APIError:
    """What a failure of the Ray path means to a client."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray_errors.RayTaskError) and isinstance(cause, APIError):
        return cause  # raised by the replica's engine: same meaning here
    if isinstance(exc, APIError):
        return exc
    if isinstance(
        exc,
        ray_errors.RayActorError
        | ray_errors.WorkerCrashedError
        | ray_errors.NodeDiedError
        | ray_errors.ObjectLostError
        | serve_errors.ReplicaUnavailableError,
    ):
        return ReplicaDiedError()
    if isinstance(exc, serve_errors.BackPressureError | serve_errors.DeploymentUnavailableError):
        return ServiceUnavailableError("All engine replicas are busy or unavailable; retry.")
    return InternalError(f"Ray path failure: {exc!r}")
