"""The ceiling of the HTTP layer alone: servers whose "engine" streams instantly.

``python -m deepseek_serve.bench.ceiling instant``: our whole app (parsing, DeepSeek prompt
rendering and tokenization, validation, formatting, SSE, disconnect handling) over
``InstantEngine``;
``python -m deepseek_serve.bench.ceiling starlette``: a bare Starlette endpoint that reads the JSON
body and streams the same completion chunks with ``json.dumps``.

Both run under the uvicorn settings ``deepseek-serve`` uses, and both yield to the event loop once
per token, as a real engine's output queue does. Benchmark them against each other with
``deepseek-serve bench --compare instant starlette ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from deepseek_serve.engine import Engine, EngineOutput, ModelLimits, SamplingOptions, SequenceDelta

# Plain pieces of the DeepSeek vocabulary (ids of the deepseek-coder tokenizer).
_PIECES = (" alpha", " beta", " gamma", " delta", "\n", " return", " x", " =", "1")


@dataclass
class InstantEngine(Engine):
    """The ``Engine`` contract with no model: ``max_tokens`` one-token deltas, at once."""

    token_ids: list[int]
    texts: list[str]
    limits: ModelLimits = field(default_factory=lambda: ModelLimits(4096, 32256))
    running: int = 0

    async def start(self) -> None:
        return None

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[EngineOutput]:
        self.running += 1
        try:
            k = len(self.token_ids)
            for step in range(options.max_tokens):
                await asyncio.sleep(0)
                last = step == options.max_tokens - 1
                deltas = [
                    SequenceDelta(
                        i,
                        self.texts[step % k],
                        [self.token_ids[step % k]],
                        None,
                        "length" if last else None,
                    )
                    for i in range(options.n)
                ]
                yield EngineOutput(deltas, finished=last)
        finally:
            self.running -= 1

    async def abort(self, request_id: str) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def num_unfinished_requests(self) -> int:
        return self.running

    async def shutdown(self) -> None:
        return None


def instant_app(served_name: str) -> Starlette:
    from deepseek_serve.app import create_app
    from deepseek_serve.demo import build_demo_model, default_cache_dir
    from deepseek_serve.prompts.tokenizer import prepare_tokenizer
    from deepseek_serve.settings import load_settings

    setup = prepare_tokenizer(build_demo_model("demo"), work_dir=default_cache_dir() / "tokenizers")
    hf = setup.prompt_tokenizer.hf
    ids = [hf.encode(p, add_special_tokens=False)[0] for p in _PIECES]
    texts = [str(hf.decode([i])) for i in ids]
    settings = load_settings({"model": "demo", "served_model_name": served_name})
    return create_app(settings, InstantEngine(ids, texts), setup.prompt_tokenizer)


def starlette_app(served_name: str) -> Starlette:
    """The least a streaming completions endpoint can do."""

    async def completions(request: Request) -> Response:
        body = await request.json()
        n_tokens = int(body.get("max_tokens") or 16)
        prompt = body.get("prompt", "")
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        async def frames() -> AsyncIterator[bytes]:
            for step in range(n_tokens):
                await asyncio.sleep(0)
                last = step == n_tokens - 1
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": served_name,
                    "choices": [
                        {
                            "index": 0,
                            "text": _PIECES[step % len(_PIECES)],
                            "logprobs": None,
                            "finish_reason": "length" if last else None,
                        }
                    ],
                    "usage": None,
                }
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            usage = {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": n_tokens,
                "total_tokens": len(prompt) // 4 + n_tokens,
            }
            tail = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": served_name,
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deepseek_serve.bench.ceiling")
    parser.add_argument("kind", choices=("instant", "starlette"))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="demo")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Processes on the port, each with its own instant engine: the front end's ceiling "
        "as --api-processes grows, without an engine in the way (sockets as --api-processes "
        "binds them).",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    args = parser.parse_args()
    if args.processes > 1:
        _serve_processes(args)
    else:
        _serve(args, None, None)


def _serve(args: argparse.Namespace, sock: Any, index: int | None) -> None:
    import uvicorn

    from deepseek_serve.http.observability import configure_logging
    from deepseek_serve.server import uvicorn_config
    from deepseek_serve.settings import load_settings

    if index is not None:
        import setproctitle

        setproctitle.setproctitle(f"deepseek_serve::api {index}")  # API CPU for the benchmark
    # Other settings (limits, timeouts) come from the DEEPSEEK_SERVE_* environment.
    configure_logging(args.log_level, "text")
    app = (instant_app if args.kind == "instant" else starlette_app)(args.served_model_name)
    settings = load_settings({"model": "demo", "port": args.port, "log_level": args.log_level})
    uvicorn.Server(uvicorn_config(app, settings)).run(sockets=None if sock is None else [sock])


def _serve_processes(args: argparse.Namespace) -> None:
    import multiprocessing
    import signal

    from deepseek_serve.api_processes import bind

    sockets = bind("127.0.0.1", args.port, args.processes)
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_serve, args=(args, sock, i)) for i, sock in enumerate(sockets)]
    for proc in procs:
        proc.start()
    for sock in sockets:
        sock.close()

    def stop(signum: int, frame: Any) -> None:
        for proc in procs:
            proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
