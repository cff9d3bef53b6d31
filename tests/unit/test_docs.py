"""The README documents every setting (a setting added without a row fails here)."""

from __future__ import annotations

from pathlib import Path

from deepseek_serve.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = []
    for name in Settings.model_fields:
        flag = "--engine-arg" if name == "engine_args" else "--" + name.replace("_", "-")
        if f"`{flag}`" not in text and f"`{flag} " not in text:
            missing.append(flag)
    assert not missing, f"settings missing from README.md: {missing}"
