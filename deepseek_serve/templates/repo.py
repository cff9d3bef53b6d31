"""Repository-level prompts in DeepSeek-Coder's own layout (its README's repository example).

Every file is a ``#path`` header line followed by its content; other files (dependencies) come
first, the current file last, and the model continues the current file. With a suffix, the whole
thing is the prefix of a fill-in-the-middle prompt:

    <｜fim▁begin｜>#utils.py\\n...\\n\\n#main.py\\n{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>

so a request that only changes the current file keeps the other files as a cacheable prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deepseek_serve.prompts.variant import Variant
from deepseek_serve.templates.fim import render_fim


@dataclass(frozen=True, slots=True)
class RepoFile:
    """Another file of the repository: its path (the header) and its text."""

    filename: str
    text: str


def file_header(filename: str) -> str:
    return f"#{filename}\n"


def render_file(file: RepoFile) -> str:
    """``#path`` line, the text (newline-terminated) and one blank line before the next file."""
    text = file.text if file.text.endswith("\n") or not file.text else file.text + "\n"
    return f"{file_header(file.filename)}{text}\n"


def render_repo(
    files: Sequence[RepoFile],
    prefix: str,
    suffix: str | None,
    variant: Variant,
    *,
    filename: str | None = None,
) -> str:
    """The prompt text (no BOS: the tokenizer adds it once). ``suffix=None`` is plain
    completion; ``filename`` adds the current file's header line."""
    head = "".join(render_file(f) for f in files)
    current = (file_header(filename) if filename else "") + prefix
    if suffix is None:
        return head + current
    return render_fim(head + current, suffix, variant)
