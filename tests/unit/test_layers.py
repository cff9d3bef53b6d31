"""The package's layers import one way: routes down to http, prompts and the engine, never back.
Each package's ``__init__`` docstring states its rule; this test holds the code to it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "deepseek_serve"

# module prefix (relative to the package) -> prefixes it must not import
FORBIDDEN = {
    "templates": ("http", "routes", "engine", "app", "server", "cli", "bench", "ray_", "api_"),
    "prompts": ("http", "routes", "app", "server", "cli", "bench", "ray_", "api_"),
    "engine": ("http", "routes", "prompts", "templates", "app", "server", "cli", "bench", "api_"),
    "http": ("routes", "app", "server", "cli", "bench", "api_"),
    "routes": ("app", "server", "cli", "bench", "ray_", "api_"),
}


def _imports(path: Path) -> set[str]:
    """Every ``deepseek_serve.*`` module a file imports (at any depth), package-relative."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {
            n.removeprefix("deepseek_serve.") for n in names if n.startswith("deepseek_serve.")
        }
    return found


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")


def test_layers_import_one_way() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40, "the package's modules were not found"
    broken = []
    for path in files:
        module = _layer(path)
        for layer, banned in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for imported in _imports(path):
                if imported.startswith(banned):
                    broken.append(f"{module} imports {imported}")
    assert not broken, "\n".join(broken)


def test_only_the_cli_enters_the_benchmarks() -> None:
    users = [
        _layer(path)
        for path in PACKAGE.rglob("*.py")
        if not _layer(path).startswith("bench")
        and any(i.startswith("bench") for i in _imports(path))
    ]
    assert users == ["cli"]


def test_routes_validate_through_the_opened_request() -> None:
    """``Opened.validate`` reserves the request under its key's token limit; a route that calls
    the validator itself would let the request bypass the limit."""
    bypass = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted((PACKAGE / "routes").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "validator.validate(" in line
    ]
    assert not bypass, bypass
