"""The real engine dies mid-stream: the stream ends with an error frame and [DONE], /health turns
503 and new requests get 503 in the OpenAI error shape. Uses its own server, since it kills it."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from deepseek_serve.demo import build_demo_model
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("e2e-doomed")
    yield from start_server(root, build_demo_model("demo", root / "doomed-coder"), "doomed")


def _engine_core(server: LiveServer) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    raise AssertionError("no EngineCore process found")


def test_engine_death_mid_stream(doomed: LiveServer) -> None:
    body = {
        "model": "doomed",
        "prompt": "x",
        "max_tokens": 3000,
        "stream": True,
        "logit_bias": {"32014": -100},
    }
    frames: list[str] = []
    with httpx.stream("POST", f"{doomed.base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            frames.append(line)
            if len(frames) == 3:
                _engine_core(doomed).send_signal(signal.SIGKILL)
    assert frames[-1] == "data: [DONE]"
    error = json.loads(frames[-2][len("data: ") :])["error"]
    assert error["type"] == "service_unavailable_error" and error["code"] == "engine_dead"
    assert "Traceback" not in "\n".join(frames)

    deadline = time.monotonic() + 10
    while httpx.get(f"{doomed.base_url}/health").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(f"{doomed.base_url}/v1/completions", json={"model": "doomed", "prompt": "x"})
    assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
