"""HTTP routes: one module per API concept, each a thin layer over prompts, engine, formatting."""

from __future__ import annotations

from starlette.routing import Route

from deepseek_serve.routes import chat, completions, deploy, infill, system


def all_routes() -> list[Route]:
    return [*system.routes, *completions.routes, *chat.routes, *infill.routes, *deploy.routes]
