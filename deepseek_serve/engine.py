"""The engine interface the HTTP layer talks to, and its vLLM implementation.

The HTTP layer tokenizes prompts itself (with the verified DeepSeek tokenizer) and hands the engine
token ids and sampling options; the engine streams back per-sequence deltas. Nothing here knows
about HTTP, and nothing above it imports vLLM.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from prometheus_client import Counter

from deepseek_serve.errors import EngineDeadError, InternalError, InvalidRequestError
from deepseek_serve.guardian import EngineGuardian

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from deepseek_serve.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A constraint on the output, for vLLM's structured-output backend: ``kind`` is one of
    ``json`` (a JSON schema, as a dict or its text), ``json_object`` (any JSON object),
    ``regex``, ``choice`` (a list of strings) or ``grammar`` (EBNF / Lark)."""

    kind: str
    value: Any
    disable_any_whitespace: bool = False


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """What to generate. Stop token ids are complete: the engine adds none of its own."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: tuple[int, ...] | None = None
    structured: StructuredOutput | None = None
    min_tokens: int = 0
    priority: int = 0
    # Not sampling: a routing hint (the OpenAI 'user' field). With several engine replicas, a
    # session's requests go to the same replica, whose prefix cache holds its context.
    session: str | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # best first
    rank: int | None = None  # of this token among the vocabulary (1: the most likely)


@dataclass(slots=True)
class SequenceDelta:
    """New output of one sequence (choice) since the previous delta."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # the stop string or token id that ended it


@dataclass(slots=True)
class EngineOutput:
    sequences: list[SequenceDelta]
    finished: bool
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelLimits:
    max_model_len: int
    model_vocab_size: int


@dataclass(frozen=True, slots=True)
class Capacity:
    """Engine replicas running against the number wanted (scale-out)."""

    running: int
    desired: int
    states: dict[str, int] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return self.running < self.desired


# What the engine-side tokenizer check runs: given the tokenizer the engine loaded, the problems
# found (none: it tokenizes as DeepSeek does). Picklable, so replicas can run it where they are.
TokenizerCheck = Callable[[Any], list[str]]


class Engine(abc.ABC):
    """Contract between the HTTP layer and an inference engine.

    - ``start`` is awaited once before any other call; ``limits`` is valid after it.
    - ``generate`` yields ``EngineOutput``s; the last one has ``finished=True`` and every sequence
      gets exactly one non-None ``finish_reason`` ("stop" or "length") over the stream. Closing or
      cancelling the iterator aborts the request in the engine. It raises ``InvalidRequestError``
      for input the engine refuses, ``EngineDeadError`` when the engine is gone, ``InternalError``
      otherwise.
    - ``num_unfinished_requests`` counts requests the engine still holds (running or waiting).
    - ``check_health`` raises ``EngineDeadError`` when the engine cannot serve.

    Optional capabilities have defaults that mean "not applicable": ``capacity`` (replicas),
    ``self_healing`` (the engine replaces itself when it dies, so the server must not exit),
    ``check_tokenizer`` (run a check against the tokenizer the engine itself loaded).
    """

    limits: ModelLimits
    # Ray Serve replaces dead replicas itself: the server must not exit when none is running.
    self_healing: ClassVar[bool] = False

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]: ...

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None: ...

    @abc.abstractmethod
    async def check_health(self) -> None: ...

    @abc.abstractmethod
    def num_unfinished_requests(self) -> int: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    async def capacity(self) -> Capacity | None:
        """Replicas running and wanted; ``None`` for a single engine."""
        return None

    async def check_tokenizer(self, check: TokenizerCheck) -> list[str] | None:
        """``check`` run against the tokenizer the engine loaded (on every replica); ``None``
        when this engine has no tokenizer of its own to check."""
        return None


@dataclass(slots=True)
class VLLMEngine(Engine):
    """vLLM's ``AsyncLLM`` behind the ``Engine`` contract (CUDA in production, CPU in CI)."""

    settings: Settings
    model_path: str
    tokenizer_path: str
    limits: ModelLimits = field(default_factory=lambda: ModelLimits(0, 0))
    _llm: AsyncLLM | None = None
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _guardian: EngineGuardian | None = None  # kills the engine's processes if we die first
    # Set in one of several API processes (``api_processes``): the engine core runs under the
    # parent process, and this is vLLM's client config for reaching it (addresses, index).
    client: dict[str, Any] | None = None

    def engine_args(self) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.tokenizer_path,
            "served_model_name": s.model_name,
            "tensor_parallel_size": s.tensor_parallel_size,
            "dtype": s.dtype,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "enforce_eager": s.enforce_eager,
            "seed": s.seed,
        }
        optional = {
            "max_model_len": s.max_model_len,
            "quantization": s.quantization,
            "revision": s.revision,
            "max_num_seqs": s.max_num_seqs,
            "enable_prefix_caching": s.enable_prefix_caching,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        args.update(s.engine_args)
        return args

    async def start(self) -> None:
        # Importing vLLM takes seconds: off the event loop, so /health keeps answering.
        await asyncio.to_thread(_import_vllm)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**self.engine_args())
        stat_loggers: list[Any] | None = None
        if not (args.disable_log_stats or self.settings.full_engine_metrics):
            from deepseek_serve.engine_stats import EngineStatsLogger

            stat_loggers = [EngineStatsLogger]

        def connect() -> AsyncLLM:
            assert self.client is not None
            from vllm.usage.usage_lib import UsageContext

            client = dict(self.client)
            count, index = client.pop("client_count"), client.pop("client_index")
            client.pop("api_server_loads", None)
            args._api_process_count, args._api_process_rank = count, index
            return AsyncLLM.from_vllm_config(
                args.create_engine_config(UsageContext.OPENAI_API_SERVER),
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=stat_loggers,
                disable_log_stats=args.disable_log_stats,
                client_addresses=client,
                client_count=count,
                client_index=index,
            )

        def build() -> AsyncLLM:
            if self.client is not None:
                llm = connect()  # the engine core is the parent's: nothing of ours to guard
            else:
                # Before the engine's processes exist: however this process ends, none
                # outlives it.
                self._guardian = EngineGuardian()
                llm = AsyncLLM.from_engine_args(args, stat_loggers=stat_loggers)
            with self._lock:
                if not self._closed:
                    self._llm = llm
                    _freeze_heap()
                    _cache_vllm_envs()
                    return llm
            llm.shutdown()  # shut down while starting: never leave an engine behind
            raise EngineDeadError("The server shut down while the engine was starting.")

        # Building the engine blocks for tens of seconds (it spawns and handshakes the engine
        # core); a thread keeps the event loop, and so /health, answering meanwhile.
        llm = await asyncio.to_thread(build)
        count_abandoned_tokens(llm.output_processor, abandoned_tokens_counter())
        config = llm.model_config
        self.limits = ModelLimits(
            max_model_len=config.max_model_len, model_vocab_size=config.get_vocab_size()
        )

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineDeadError("The inference engine is still starting.")
        return self._llm

    async def check_tokenizer(self, check: TokenizerCheck) -> list[str] | None:
        return check(self.llm.get_tokenizer())

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        llm = self.llm
        try:
            params = _to_vllm(options)
        except (ValueError, VLLMValidationError) as exc:
            # SamplingParams checks only client-given values: its refusals are the client's.
            raise InvalidRequestError(
                str(exc.args[0]), param=getattr(exc, "parameter", None)
            ) from exc
        # Already tokenized and checked by us: an engine input skips vLLM's renderer.
        stream = llm.generate(
            tokens_input(prompt_token_ids), params, request_id, priority=options.priority
        )
        try:
            async for out in stream:
                yield _from_vllm(out, options.logprobs or 0, options.prompt_logprobs or 0)
        except VLLMEngineDeadError as exc:
            raise EngineDeadError() from exc
        except VLLMValidationError as exc:
            raise InvalidRequestError(exc.args[0], param=exc.parameter) from exc
        except Exception as exc:  # not CancelledError/GeneratorExit: those abort, below
            if llm.errored:
                raise EngineDeadError() from exc
            raise InternalError(f"engine failure: {exc!r}") from exc
        finally:
            # Closing ``stream`` makes vLLM abort the request if it is still running.
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm is None or self._llm.errored:
            raise EngineDeadError()

    def num_unfinished_requests(self) -> int:
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    async def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            llm, self._llm = self._llm, None
        guardian = self._guardian
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
        elif self.client is None:
            # Still starting: the engine processes are our only children. Stopping them makes
            # the builder thread fail at once instead of finishing a start nobody wants.
            terminate_children(spare=() if guardian is None else (guardian.pid,))
        if guardian is not None:
            await asyncio.to_thread(guardian.stand_down)


ABANDONED_TOKENS = "deepseek_serve_engine_abandoned_tokens"


@functools.cache
def abandoned_tokens_counter() -> Counter:
    """One per process (the engines of a process share it), in the default registry that
    ``/metrics`` renders after the server's own families."""
    return Counter(
        ABANDONED_TOKENS,
        "Tokens the engine decoded for requests that had already ended for the server: cancelled, "
        "superseded by a newer request of their session, disconnected, or stopped by a stop "
        "string. Decoding work nobody receives.",
    )


def count_abandoned_tokens(output_processor: Any, counter: Counter) -> None:
    """Count, into ``counter``, the tokens of engine outputs that vLLM's output processor
    drops because their request is no longer known to it (aborted). vLLM counts no such thing:
    its ``generation_tokens`` see only live requests. Wraps ``process_outputs`` of this one
    output processor (vLLM's internal API, pinned with vLLM; tests/unit/test_engine_waste.py)."""
    process = output_processor.process_outputs

    def counting(outputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        live = output_processor.request_states
        abandoned = sum(len(o.new_token_ids) for o in outputs if o.request_id not in live)
        if abandoned:
            counter.inc(abandoned)
        return process(outputs, *args, **kwargs)

    output_processor.process_outputs = counting


def _import_vllm() -> None:
    """The first import of vLLM, in a frame that holds nothing.

    Some vLLM modules keep an exception from an optional import in a module global (e.g.
    ``torchcodec`` missing). Its traceback keeps alive every frame that was on the stack when
    vLLM was first imported, and each frame keeps its locals: imported from ``start``, that was
    the engine client, which then outlived ``shutdown`` and whose ``__del__`` failed at
    interpreter exit."""
    import vllm.v1.engine.async_llm  # noqa: F401


def _freeze_heap() -> None:
    """Move everything alive now (torch, transformers, vLLM and the engine client: objects that
    live as long as the process) out of the garbage collector's sight, as vLLM's own server does
    after start-up. Otherwise every full collection walks that heap while holding the event loop:
    measured at about 700 ms on the CPU test machine, a stall that whole streams wait behind."""
    gc.collect()
    gc.freeze()


def _cache_vllm_envs() -> None:
    """Read vLLM's environment variables once from now on. Each ``vllm.envs.X`` otherwise calls
    ``os.getenv`` again, and vLLM's output processing reads some for every request on every
    engine step: about 3% of the API process's CPU at concurrency 32 here (py-spy). vLLM's
    engine core and workers do the same once started; its API server does not. Nothing in this
    process changes vLLM's variables after the engine is up."""
    from vllm import envs

    envs.enable_envs_cache()


def terminate_children(grace: float = 5.0, spare: Collection[int] = ()) -> None:
    """Stop every process below this one but ``spare``: SIGTERM, then SIGKILL after ``grace``."""
    import psutil

    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in spare]
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _to_vllm(o: SamplingOptions) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if o.structured is not None:
        structured = StructuredOutputsParams(
            **{o.structured.kind: o.structured.value},
            disable_any_whitespace=o.structured.disable_any_whitespace,
        )

    return SamplingParams(
        n=o.n,
        max_tokens=o.max_tokens,
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        min_p=o.min_p,
        seed=o.seed,
        stop=list(o.stop),
        stop_token_ids=list(o.stop_token_ids),
        # Our stop ids are complete and per-variant; vLLM's own eos (e.g. <|EOT|> of an instruct
        # checkpoint) must not end a code completion.
        ignore_eos=True,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        repetition_penalty=o.repetition_penalty,
        logprobs=o.logprobs,
        prompt_logprobs=o.prompt_logprobs,
        logit_bias=o.logit_bias,
        allowed_token_ids=list(o.allowed_token_ids) if o.allowed_token_ids else None,
        structured_outputs=structured,
        min_tokens=o.min_tokens,
        output_kind=RequestOutputKind.DELTA,
    )


def _from_vllm(out: Any, k: int, k_prompt: int) -> EngineOutput:
    sequences = [
        SequenceDelta(
            index=c.index,
            text=c.text,
            token_ids=list(c.token_ids),
            logprobs=None
            if c.logprobs is None
            else [_logprob(t, lp, k) for t, lp in zip(c.token_ids, c.logprobs, strict=False)],
            finish_reason=c.finish_reason,
            stop_reason=c.stop_reason,
        )
        for c in out.outputs
    ]
    prompt_logprobs = None
    if out.prompt_logprobs is not None:
        ids = out.prompt_token_ids or []
        prompt_logprobs = [
            None if lp is None else _logprob(token_id, lp, k_prompt)
            for token_id, lp in zip(ids, out.prompt_logprobs, strict=False)
        ]
    return EngineOutput(
        sequences=sequences,
        finished=out.finished,
        prompt_logprobs=prompt_logprobs,
        num_cached_tokens=out.num_cached_tokens or 0,
    )


def _logprob(token_id: int, candidates: Any, k: int) -> TokenLogprob:
    """vLLM gives the sampled token plus the top ``k``; the sampled one may be among them."""
    chosen = candidates[token_id]
    ranked = sorted(candidates.items(), key=lambda kv: -kv[1].logprob)[:k]
    top = tuple((tid, lp.decoded_token or "", lp.logprob) for tid, lp in ranked)
    rank = getattr(chosen, "rank", None)
    return TokenLogprob(token_id, chosen.decoded_token or "", chosen.logprob, top, rank)


def model_dir_of(model: str, *, revision: str | None = None, allow_download: bool = True) -> Path:
    """Local directory holding ``model``'s config and tokenizer files (downloaded if a hub id)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not allow_download:
        raise FileNotFoundError(model)
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            model,
            revision=revision,
            allow_patterns=["config.json", "generation_config.json", "tokenizer*", "*.model"],
        )
    )
