"""What the routes share, built in the app's lifespan; no module globals."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from starlette.requests import Request

from deepseek_serve.engine import Engine
from deepseek_serve.errors import (
    EngineDeadError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ShuttingDownError,
)
from deepseek_serve.http.auth import KeyRing
from deepseek_serve.http.body import Body, parse_body
from deepseek_serve.http.observability import Metrics, current_request
from deepseek_serve.http.quotas import Quotas
from deepseek_serve.http.sessions import SessionRegistry, session_key
from deepseek_serve.http.streaming import OPENAI, Dialect
from deepseek_serve.http.tracking import TrackedEngine
from deepseek_serve.prompts.packing import PieceCache
from deepseek_serve.prompts.tokenizer import PromptTokenizer
from deepseek_serve.prompts.validation import GenerationRequest, Validator, ValidRequest
from deepseek_serve.settings import Settings


@dataclass(slots=True)
class ServerState:
    settings: Settings
    engine: TrackedEngine
    tokenizer: PromptTokenizer
    metrics: Metrics
    keys: KeyRing
    quotas: Quotas = field(default_factory=Quotas)
    created: int = field(default_factory=lambda: int(time.time()))
    validator: Validator | None = None  # set once the engine has started
    failed: BaseException | None = None
    draining: bool = False  # SIGTERM received: finishing what runs, refusing the rest
    in_flight: int = 0  # generation requests admitted and not yet answered
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    context_cache: PieceCache = field(default_factory=PieceCache)  # other files' tokens
    dialects: dict[str, Dialect] = field(default_factory=dict)  # route path -> its dialect
    # With several API processes: whether every one of them has started (the server is ready
    # only then: a 200 from one must not be followed by a 503 "starting" from another).
    peers_ready: Callable[[], bool] = lambda: True

    @classmethod
    def build(cls, settings: Settings, engine: Engine, tokenizer: PromptTokenizer) -> ServerState:
        metrics = Metrics()
        return cls(
            settings=settings,
            engine=TrackedEngine(engine, metrics),
            tokenizer=tokenizer,
            metrics=metrics,
            keys=KeyRing.from_settings(settings),
        )

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def status(self) -> str:
        """``serving`` once the engine is up, else why not: ``draining``, ``failed``,
        ``starting``. ``/health`` and the opening checks both read this."""
        if self.draining:
            return "draining"
        if self.failed is not None:
            return "failed"
        if self.validator is None or not self.peers_ready():
            return "starting"
        return "serving"

    def ready(self) -> Validator:
        """The validator, or the 503 that says why requests cannot be served now."""
        status = self.status()
        if status == "draining":
            raise ShuttingDownError()
        if status == "failed":
            raise EngineDeadError()
        if self.validator is None or not self.peers_ready():
            raise ServiceUnavailableError(
                "The model is still loading; retry shortly.", code="starting"
            )
        return self.validator

    def check_model(self, requested: str | None) -> None:
        # Missing, null or "" means the served model, as vLLM does (llama.vim sends "").
        if requested and requested not in (self.model_name, self.settings.model):
            raise ModelNotFoundError(
                f"The model {requested!r} does not exist; this server serves {self.model_name!r}.",
                param="model",
            )

    def dialect(self, path: str) -> Dialect:
        return self.dialects.get(path, OPENAI)


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.deepseek
    return state


B = TypeVar("B", bound=Body)


@dataclass(frozen=True, slots=True)
class Opened(Generic[B]):
    state: ServerState
    body: B
    validator: Validator
    session: str | None  # the editor session key, scoped by credentials

    async def validate(self, req: GenerationRequest) -> ValidRequest:
        """Validate ``req`` and reserve, under the API key's token limit, all it may use:
        each prompt's tokens plus max_tokens for each choice (the gate gives back what is left
        unused when the request ends)."""
        valid = await self.validator.validate(req)
        info = current_request()
        if info is not None and info.key is not None:
            options = valid.options
            tokens = sum(len(p.token_ids) + options.n * options.max_tokens for p in valid.prompts)
            info.reservation = self.state.quotas.reserve(
                info.key, tokens, param=req.name("max_tokens")
            )
        return valid


async def open_request(
    request: Request,
    model: type[B],
    *,
    sessions: bool = True,
    any_content_type: bool = False,
    check_model: bool = True,
) -> Opened[B]:
    """The opening checks of every generation handler, in one order: parse and validate the
    body, the model it names, the engine's readiness, the editor session key. A dialect that
    names models its own way (Ollama) passes ``check_model=False`` and checks it itself."""
    state = server_state(request)
    body = await parse_body(request, model, any_content_type=any_content_type)
    if check_model:
        state.check_model(body.model)
    validator = state.ready()
    session = session_key(request, body.session_id) if sessions else None
    return Opened(state, body, validator, session)
