"""Prompt templates: chat (per model family), fill-in-the-middle and repository prompts, as pure
functions of text and the variant's special tokens.

Imports: ``prompts.variant`` only. Never ``http``, ``routes`` or the engine."""

from __future__ import annotations

from deepseek_serve.templates.chat import ChatMessage, render_chat
from deepseek_serve.templates.fim import render_fim

__all__ = ["ChatMessage", "render_chat", "render_fim"]
