"""Tests that need the full install (``make install``): vLLM, Ray, kubernetes-validate and
promql-parser, imported at module level. Fast, but not part of ``make test-fast``, which runs
with the core and dev packages only. Marked ``integration`` here, not in each file."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
