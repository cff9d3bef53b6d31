"""What the routes share, built in the app's lifespan; no module globals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from deepseek_serve.context import PieceCache
from deepseek_serve.engine import Engine
from deepseek_serve.errors import EngineDeadError, ModelNotFoundError, ServiceUnavailableError
from deepseek_serve.prompts import PromptBuilder
from deepseek_serve.sessions import SessionRegistry
from deepseek_serve.settings import Settings
from deepseek_serve.tokenizer import PromptTokenizer


@dataclass(slots=True)
class ServerState:
    settings: Settings
    engine: Engine
    tokenizer: PromptTokenizer
    created: int = field(default_factory=lambda: int(time.time()))
    prompts: PromptBuilder | None = None  # set once the engine has started
    failed: BaseException | None = None
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    context_cache: PieceCache = field(default_factory=PieceCache)  # other files' tokens

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def ready_prompts(self) -> PromptBuilder:
        if self.failed is not None:
            raise EngineDeadError()
        if self.prompts is None:
            raise ServiceUnavailableError(
                "The model is still loading; retry shortly.", code="starting"
            )
        return self.prompts

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in (self.model_name, self.settings.model):
            raise ModelNotFoundError(
                f"The model {requested!r} does not exist; this server serves {self.model_name!r}.",
                param="model",
            )


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.deepseek
    return state
