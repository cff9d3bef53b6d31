from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from deepseek_serve.settings import Settings
from tests.fakes import FakeEngine

MakeClient = Callable[..., tuple[TestClient, FakeEngine]]


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 5
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "fake engine never became ready"
        time.sleep(0.01)


async def wait_started(app: Starlette) -> None:
    """Until the app's (fake) engine has started, for tests that drive the ASGI app directly."""
    deadline = time.monotonic() + 5
    while app.state.deepseek.validator is None:
        assert time.monotonic() < deadline, "fake engine never started"
        await asyncio.sleep(0.001)


def settings_for(**values: Any) -> Settings:
    """Settings from ``values`` and defaults only, whatever the environment holds."""
    return Settings(model="demo", _env_prefix="DEEPSEEK_SERVE_TEST_UNUSED_", **values)


@pytest.fixture
def make_client(v1_setup: TokenizerSetup) -> Iterator[MakeClient]:
    clients: list[TestClient] = []

    def make(
        setup: TokenizerSetup | None = None,
        wait: bool = True,
        settings: dict[str, Any] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        **engine_kwargs: Any,
    ) -> tuple[TestClient, FakeEngine]:
        setup = setup or v1_setup
        engine = FakeEngine(setup.prompt_tokenizer, **engine_kwargs)
        client = TestClient(
            create_app(
                settings_for(**(settings or {})),
                engine,
                setup.prompt_tokenizer,
                on_fatal=on_fatal,
            )
        )
        client.__enter__()
        clients.append(client)
        if wait:
            wait_ready(client)
        return client, engine

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()[0]


@pytest.fixture
def client_engine(make_client: MakeClient) -> tuple[TestClient, FakeEngine]:
    return make_client()
