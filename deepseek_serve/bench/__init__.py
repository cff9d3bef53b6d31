"""``deepseek-serve bench``: a serving benchmark comparable with ``vllm bench serve``.

A client of the server over HTTP. Imports the server's code only to start servers and build demo
checkpoints (``app``, ``server``, ``demo``, ``settings``); nothing in the server imports it."""
