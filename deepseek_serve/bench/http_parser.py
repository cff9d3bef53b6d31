"""What bounding the request head costs: API-process CPU per request, per HTTP protocol.

``python -m deepseek_serve.bench.http_parser [--requests 200] [--tokens 64] [--rounds 3]``

Runs the instant-engine app (``bench.ceiling``: our whole app, no model) under the uvicorn
settings ``deepseek-serve`` uses, with each protocol in turn, alternating per round, and sends
the same sequential streaming ``/v1/completions`` requests to each:

- ``ours``: what the server runs, ``http.protocol.GuardedHttpToolsProtocol``;
- ``h11``: ``http.protocol.GuardedH11Protocol``, the same checks over h11;
- ``httptools``: uvicorn's own httptools protocol, unbounded.

It prints the server process's CPU time (user + system, from /proc via psutil) per request: work
done, hardly moved by how busy the machine is, unlike wall time. It prints numbers; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx
import psutil

from deepseek_serve.bench.servers import free_port

_SERVER = """
import sys
import uvicorn
from deepseek_serve.bench.ceiling import instant_app
from deepseek_serve.server import uvicorn_config
from deepseek_serve.settings import load_settings

app = instant_app("demo")
settings = load_settings({"model": "demo", "port": int(sys.argv[2]), "log_level": "warning"})
config = uvicorn_config(app, settings)
if sys.argv[1] == "httptools":
    config.http = "httptools"  # uvicorn's own, unbounded
elif sys.argv[1] == "h11":
    from deepseek_serve.http.protocol import guarded_protocol

    config.http = guarded_protocol(settings, parser="h11")
uvicorn.Server(config).run()
"""


def cpu_per_request(parser: str, requests: int, tokens: int) -> tuple[float, float]:
    """(API-process CPU ms, wall ms) per streaming request, after a warm-up."""
    port = free_port()
    cmd = [sys.executable, "-c", _SERVER, parser, str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {parser} server did not start")
            time.sleep(0.2)
        server = psutil.Process(proc.pid)
        body = {"model": "demo", "prompt": "def f(", "max_tokens": tokens, "stream": True}

        def send(n: int, client: httpx.Client) -> None:
            for _ in range(n):
                with client.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        raise SystemExit(f"{parser}: status {r.status_code}")
                    for _ in r.iter_bytes():
                        pass

        with httpx.Client(base_url=base, timeout=60) as client:
            send(20, client)
            before, start = server.cpu_times(), time.monotonic()
            send(requests, client)
            after, end = server.cpu_times(), time.monotonic()
        cpu = (after.user + after.system) - (before.user + before.system)
        return cpu / requests * 1000, (end - start) / requests * 1000
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deepseek_serve.bench.http_parser")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {"ours": [], "h11": [], "httptools": []}
    for round_ in range(args.rounds):
        for name in cpu:
            ms, wall = cpu_per_request(name, args.requests, args.tokens)
            cpu[name].append(ms)
            print(
                f"round {round_} {name:9s}: {ms:.2f} ms API CPU per request, "
                f"{wall:.2f} ms wall ({args.requests} x {args.tokens} streamed tokens)",
                flush=True,
            )
    plain = statistics.median(cpu["httptools"])
    for name, values in cpu.items():
        ms = statistics.median(values)
        print(f"median API CPU per request, {name:9s}: {ms:.2f} ms ({ms / plain:.2f} x httptools)")


if __name__ == "__main__":
    main()
