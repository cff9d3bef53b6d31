from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepseek_serve.demo import DEMOS, packaged_tokenizer_dir
from deepseek_serve.prompts.tokenizer import TokenizerSetup, prepare_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
GUIDE_VARIABLES = ("PORT", "LOG_LEVEL", "MODEL_SIZE")  # the deployment guide's names


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings variable of the machine running the tests (``DEEPSEEK_SERVE_*`` and the
    deployment guide's names) reaches a test's settings."""
    for name in list(os.environ):
        if name.startswith("DEEPSEEK_SERVE_") or name in GUIDE_VARIABLES:
            monkeypatch.delenv(name)


def model_dir_with(tmp: Path, demo: str, tokenizer_dir: Path | None = None) -> Path:
    """A checkpoint directory with config.json and tokenizer files only (no weights)."""
    spec = DEMOS[demo]
    tmp.mkdir(parents=True, exist_ok=True)
    config = {**spec.config, "architectures": [spec.architecture]}
    (tmp / "config.json").write_text(json.dumps(config))
    src = tokenizer_dir or packaged_tokenizer_dir(spec.tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, tmp / name)
    return tmp


@pytest.fixture(scope="session")
def v1_setup(tmp_path_factory: pytest.TempPathFactory) -> TokenizerSetup:
    root = tmp_path_factory.mktemp("v1")
    return prepare_tokenizer(model_dir_with(root / "model", "demo"), work_dir=root / "work")


@pytest.fixture(scope="session")
def v2_setup(tmp_path_factory: pytest.TempPathFactory) -> TokenizerSetup:
    root = tmp_path_factory.mktemp("v2")
    return prepare_tokenizer(model_dir_with(root / "model", "demo-v2"), work_dir=root / "work")


_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figures() -> list[str]:
    """Lines a test measured (load rounds, memory ...), printed in the run's summary."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("measured")
        for line in _FIGURES:
            terminalreporter.write_line(line)
