"""The compatibility tier: each client's exact requests, read the way the client reads them.

Tests that take the ``server`` fixture run on the e2e tier's real server (one per session,
shared) and are marked ``e2e`` here; the others replay requests against the app in process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import client, server

__all__ = ["client", "server"]

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
