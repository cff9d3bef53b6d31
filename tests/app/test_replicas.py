"""The HTTP layer over engine replicas: /health reports capacity, the session reaches the engine."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.testclient import TestClient

from deepseek_serve.app import create_app
from deepseek_serve.engine import Capacity
from deepseek_serve.prompts.tokenizer import TokenizerSetup
from deepseek_serve.settings import Settings
from tests.app.conftest import wait_ready
from tests.fakes import FakeEngine


@dataclass
class ReplicatedFake(FakeEngine):
    """A fake engine that reports replica capacity like ``RayEngine``."""

    replicas_running: int = 2
    desired: int = 2

    async def capacity(self) -> Capacity:
        return Capacity(running=self.replicas_running, desired=self.desired, states={})


def test_health_reports_degraded_capacity_and_the_session_reaches_the_engine(
    v1_setup: TokenizerSetup,
) -> None:
    engine = ReplicatedFake(v1_setup.prompt_tokenizer)
    settings = Settings(model="demo", _env_prefix="DEEPSEEK_SERVE_TEST_UNUSED_")
    with TestClient(create_app(settings, engine, v1_setup.prompt_tokenizer)) as client:
        wait_ready(client)
        assert client.get("/health").json() == {
            "status": "ok",
            "requests_in_engine": 0,
            "replicas": {"running": 2, "desired": 2},
        }
        engine.replicas_running = 1
        r = client.get("/health")
        assert r.status_code == 200  # still serving, with less capacity
        assert r.json()["status"] == "degraded"
        assert r.json()["replicas"] == {"running": 1, "desired": 2}

        body = {"prompt": "x", "max_tokens": 1, "user": "editor-7"}
        assert client.post("/v1/completions", json=body).status_code == 200
        assert engine.seen[-1][2].session == "editor-7"  # the routing hint
