"""``deepseek-serve bench``: a serving benchmark comparable with ``vllm bench serve``."""
