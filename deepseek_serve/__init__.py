"""OpenAI-compatible serving for DeepSeek-Coder models on vLLM."""

__version__ = "0.1.0"
