"""``deepseek-serve``: resolve the model, check its tokenizer, start the engine and the server."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from deepseek_serve import __version__
from deepseek_serve.settings import Settings, load_settings

logger = logging.getLogger("deepseek_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepseek-serve",
        description="OpenAI-compatible server for DeepSeek-Coder models on vLLM. Every option "
        "is also an environment variable DEEPSEEK_SERVE_<NAME> and a key of the --config YAML; "
        "precedence: flags > environment > config file > defaults.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"deepseek_serve {__version__}")
    parser.add_argument("--config", help="YAML settings file (e.g. configs/cpu.yaml).")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name == "engine_args":
            parser.add_argument(
                "--engine-arg",
                dest="engine_args",
                action="append",
                metavar="KEY=VALUE",
                help="Any other vLLM engine argument (repeatable); VALUE is JSON when it parses.",
            )
        elif _is_bool(info.annotation):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=info.description)
        else:
            parser.add_argument(flag, help=info.description)
    return parser


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return bool in typing.get_args(annotation)
    return False


def parse_engine_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def settings_from_argv(argv: Sequence[str] | None = None) -> Settings:
    ns = vars(build_parser().parse_args(argv))
    config = ns.pop("config", None)
    if "engine_args" in ns:
        ns["engine_args"] = parse_engine_args(ns["engine_args"])
    try:
        return load_settings(ns, config)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise SystemExit("invalid settings:\n" + "\n".join(lines)) from None
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"invalid settings: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # ``deepseek-serve bench ...``: the benchmark client
        from deepseek_serve.bench.cli import main as bench_main

        return bench_main(args[1:])
    settings = settings_from_argv(args)
    from deepseek_serve.http.observability import configure_logging
    from deepseek_serve.server import StartupError, serve

    configure_logging(settings.log_level, settings.log_format)

    try:
        return serve(settings)
    except StartupError as exc:
        print(f"deepseek-serve: cannot start: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
