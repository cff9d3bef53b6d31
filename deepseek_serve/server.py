"""Putting a model on a port: model resolution, the tokenizer self-check, engine, uvicorn."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from deepseek_serve.app import PostStartCheck, create_app
from deepseek_serve.demo import (
    DEMOS,
    build_demo_model,
    default_cache_dir,
    demo_dir,
    demo_engine_settings,
    is_demo_dir,
)
from deepseek_serve.engine import Engine, VLLMEngine, model_dir_of
from deepseek_serve.http.auth import KeyFileError, KeyRing
from deepseek_serve.http.lifecycle import DrainingServer
from deepseek_serve.http.protocol import guarded_protocol, head_bytes_bound
from deepseek_serve.http.quotas import shared_layout
from deepseek_serve.http.state import ServerState
from deepseek_serve.prompts.tokenizer import (
    TokenizerFidelityError,
    TokenizerSetup,
    fidelity_problems,
    prepare_tokenizer,
)
from deepseek_serve.prompts.variant import Kind, UnsupportedModelError
from deepseek_serve.settings import Settings

logger = logging.getLogger("deepseek_serve")


class StartupError(Exception):
    """The server refuses to start; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    engine_model: str  # what vLLM loads: a local directory or a hub id
    files_dir: Path  # a local directory with its config and tokenizer files
    is_demo: bool


def resolve_model(settings: Settings) -> ResolvedModel:
    cache = settings.cache_dir or default_cache_dir()
    if settings.model in DEMOS:
        path = build_demo_model(settings.model, demo_dir(settings.model, cache))
        return ResolvedModel(str(path), path, True)
    try:
        files = model_dir_of(settings.model, revision=settings.revision)
    except Exception as exc:
        raise StartupError(f"cannot find model {settings.model!r}: {exc}") from exc
    local = Path(settings.model).expanduser()
    engine_model = str(local) if local.is_dir() else settings.model
    return ResolvedModel(engine_model, files, is_demo_dir(files))


def check_tokenizer(settings: Settings, model: ResolvedModel) -> TokenizerSetup:
    """The start-up self-check of DeepSeek fidelity; repairs what it can, refuses the rest."""
    cache = settings.cache_dir or default_cache_dir()
    tokenizer_dir = None
    if settings.tokenizer:
        tokenizer_dir = model_dir_of(settings.tokenizer, revision=settings.revision)
    try:
        return prepare_tokenizer(
            model.files_dir,
            tokenizer_dir=tokenizer_dir,
            name_hint=settings.model,
            kind_override=None if settings.kind == "auto" else Kind(settings.kind),
            work_dir=cache / "tokenizers",
        )
    except (TokenizerFidelityError, UnsupportedModelError) as exc:
        raise StartupError(str(exc)) from exc


def engine_tokenizer_check(setup: TokenizerSetup) -> PostStartCheck:
    """After the engine starts: the tokenizer vLLM itself loaded (on every replica) must pass
    the same checks."""

    async def check(engine: Engine) -> None:
        problems = await engine.check_tokenizer(partial(fidelity_problems, variant=setup.variant))
        if problems is None:
            return
        if problems:
            raise StartupError(
                "the engine's tokenizer does not tokenize like DeepSeek: " + "; ".join(problems)
            )
        logger.info("engine tokenizer verified against the DeepSeek golden ids")

    return check


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """How ``deepseek-serve`` runs an app (the benchmarks' instant-engine server reuses it)."""
    state = getattr(getattr(app, "state", None), "deepseek", None)
    on_reject = None
    if isinstance(state, ServerState):
        rejected = state.metrics.rejected

        def on_reject(reason: str) -> None:
            rejected.labels(reason).inc()

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # httptools with the head bounded while it arrives (uvicorn's buffers any head).
        http=guarded_protocol(settings, on_reject),
        h11_max_incomplete_event_size=head_bytes_bound(settings),  # if h11 is chosen
        log_level=settings.log_level,
        log_config=None,  # the root logging set up by the CLI (text or JSON)
        access_log=False,  # our RequestContext logs each request, with its id
        timeout_graceful_shutdown=5,  # the drain (lifecycle.drain) has already run by then
        timeout_keep_alive=settings.keep_alive_timeout,
    )


def check_keys(settings: Settings) -> None:
    """Read the API keys before anything slow: a bad key file stops start-up at once, with
    the line at fault (never the key)."""
    try:
        ring = KeyRing.from_settings(settings)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    if settings.api_processes > 1:  # their request limits are kept in shared memory
        try:
            shared_layout(ring.keys)
        except ValueError as exc:
            raise StartupError(f"{exc} (api_processes {settings.api_processes})") from None


def serve(settings: Settings) -> int:
    check_keys(settings)
    model = resolve_model(settings)
    if model.is_demo:
        logger.warning(
            "serving %s: a tiny RANDOM-WEIGHT model around the real DeepSeek-Coder tokenizer. "
            "Its output is noise; it exists to run the whole stack offline.",
            settings.model,
        )
    if model.is_demo:
        settings = demo_engine_settings(settings)
    setup = check_tokenizer(settings, model)
    for note in setup.notes:
        problem = note.startswith("tokenizer problem") or "repaired" in note
        logger.log(logging.WARNING if problem else logging.INFO, "tokenizer: %s", note)
    logger.info("variant: %s", setup.variant.describe())

    if settings.api_processes > 1:
        from deepseek_serve.api_processes import serve_processes

        return serve_processes(settings, model, setup.tokenizer_dir)

    engine: Engine
    if settings.replicas:
        from deepseek_serve.ray_engine import RayEngine, ray_missing

        if missing := ray_missing():
            raise StartupError(missing)
        engine = RayEngine(settings, model.engine_model, str(setup.tokenizer_dir))
    else:
        engine = VLLMEngine(settings, model.engine_model, str(setup.tokenizer_dir))
    exit_code = 0
    server: DrainingServer | None = None

    def fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = 1
        if server is not None:
            server.should_exit = True

    app = create_app(
        settings,
        engine,
        setup.prompt_tokenizer,
        post_start_check=engine_tokenizer_check(setup),
        on_fatal=fatal,
    )
    server = DrainingServer(uvicorn_config(app, settings), app.state.deepseek)
    server.run()
    code = exit_code or (0 if server.started else 1)
    logger.log(logging.ERROR if code else logging.INFO, "exiting with status %d", code)
    return code
