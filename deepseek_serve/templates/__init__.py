"""Prompt templates: chat (per model family) and fill-in-the-middle."""

from __future__ import annotations

from deepseek_serve.templates.chat import ChatMessage, render_chat
from deepseek_serve.templates.fim import render_fim

__all__ = ["ChatMessage", "render_chat", "render_fim"]
