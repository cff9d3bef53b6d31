"""The compatibility tier runs on the e2e tier's real server (one per session, shared)."""

from __future__ import annotations

from tests.e2e.conftest import client, server

__all__ = ["client", "server"]
