"""What the routes share, built in the app's lifespan; no module globals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from deepseek_serve.auth import KeyRing
from deepseek_serve.context import PieceCache
from deepseek_serve.engine import Engine
from deepseek_serve.errors import (
    EngineDeadError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    ShuttingDownError,
)
from deepseek_serve.observability import Metrics
from deepseek_serve.prompts import PromptBuilder
from deepseek_serve.quotas import Quotas
from deepseek_serve.sessions import SessionRegistry
from deepseek_serve.settings import Settings
from deepseek_serve.tokenizer import PromptTokenizer
from deepseek_serve.tracking import TrackedEngine


@dataclass(slots=True)
class ServerState:
    settings: Settings
    engine: TrackedEngine
    tokenizer: PromptTokenizer
    metrics: Metrics
    keys: KeyRing
    quotas: Quotas = field(default_factory=Quotas)
    created: int = field(default_factory=lambda: int(time.time()))
    prompts: PromptBuilder | None = None  # set once the engine has started
    failed: BaseException | None = None
    draining: bool = False  # SIGTERM received: finishing what runs, refusing the rest
    in_flight: int = 0  # generation requests admitted and not yet answered
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    context_cache: PieceCache = field(default_factory=PieceCache)  # other files' tokens

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

    def ready_prompts(self) -> PromptBuilder:
        if self.draining:
            raise ShuttingDownError()
        if self.failed is not None:
            raise EngineDeadError()
        if self.prompts is None:
            raise ServiceUnavailableError(
                "The model is still loading; retry shortly.", code="starting"
            )
        return self.prompts

    def check_caps(self, req: object) -> None:
        """The operator's caps on request size (settings ``max_n``, ``max_stop_sequences`` ...),
        for any request model that has the fields."""
        s = self.settings
        counted = {
            "n": getattr(req, "n", None),
            "best_of": getattr(req, "best_of", None),
            "stop": _count(getattr(req, "stop", None)),
            "messages": _count(getattr(req, "messages", None)),
            "prompt": _prompt_count(getattr(req, "prompt", None)),
            "logprobs": _int(getattr(req, "logprobs", None)),
            "top_logprobs": _int(getattr(req, "top_logprobs", None)),
        }
        caps = {
            "n": s.max_n,
            "best_of": s.max_n,
            "stop": s.max_stop_sequences,
            "messages": s.max_messages,
            "prompt": s.max_prompts,
            "logprobs": s.max_logprobs,
            "top_logprobs": s.max_logprobs,
        }
        for name, value in counted.items():
            if value is not None and value > caps[name]:
                raise InvalidRequestError(
                    f"{name} is {value}; this server allows at most {caps[name]}."
                    if name in ("n", "best_of", "logprobs", "top_logprobs")
                    else f"{name} has {value} items; this server allows at most {caps[name]}.",
                    param=name,
                    code="limit_exceeded",
                )

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.model_name, self.settings.model):
            raise ModelNotFoundError(
                f"The model {requested!r} does not exist; this server serves {self.model_name!r}.",
                param="model",
            )


def _count(value: object) -> int | None:
    return len(value) if isinstance(value, list) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _prompt_count(prompt: object) -> int | None:
    # A list of texts or of token-id lists is a batch; a flat list of ids is one prompt.
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return None


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.deepseek
    return state
