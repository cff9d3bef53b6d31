"""Packing repository context into the model's window with the real tokenizer.

What is nearest the cursor matters most: the end of the prefix (with the text typed on the cursor's
line) and the start of the suffix are kept first (prefix:suffix 3:1 when both must be cut), then
the other files in the order given, each whole or, for the last one that fits in part, its first
whole lines. Cuts fall on token boundaries and, where possible, on line boundaries. The result is
rendered with ``templates.repo`` and tokenized once more; should tokens merge differently across a
junction, the budget is tightened and the packing redone, so the prompt always fits.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from deepseek_serve.errors import ContextWindowExceededError
from deepseek_serve.prompts.tokenizer import PromptTokenizer
from deepseek_serve.templates.repo import RepoFile, file_header, render_file, render_repo

_MAX_REPACKS = 8


@dataclass(frozen=True, slots=True)
class PackedPrompt:
    text: str
    token_ids: list[int]
    tokens_dropped: int
    prefix_tokens_dropped: int
    suffix_tokens_dropped: int
    files_kept: int  # whole
    files_cut: int  # first lines only
    files_dropped: int


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    starts: array[int]  # character offsets of each token (compact: cached between requests)
    ends: array[int]

    @property
    def n(self) -> int:
        return len(self.starts)


class PieceCache:
    """Tokenized files by content: editors resend the same other files on every keystroke.
    Thread-safe (packing runs in worker threads); least recently used entries go first."""

    def __init__(self, max_entries: int = 512, max_chars: int = 4_000_000) -> None:
        self._entries: OrderedDict[str, _Piece] = OrderedDict()
        self._chars = 0
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._lock = threading.Lock()

    def get(self, text: str) -> _Piece | None:
        with self._lock:
            piece = self._entries.get(text)
            if piece is not None:
                self._entries.move_to_end(text)
            return piece

    def put(self, piece: _Piece) -> None:
        with self._lock:
            if piece.text in self._entries or len(piece.text) > self._max_chars // 4:
                return
            self._entries[piece.text] = piece
            self._chars += len(piece.text)
            while len(self._entries) > self._max_entries or self._chars > self._max_chars:
                _, old = self._entries.popitem(last=False)
                self._chars -= len(old.text)

    def __len__(self) -> int:
        return len(self._entries)


def _pieces(
    tokenizer: PromptTokenizer, texts: list[str], cache: PieceCache | None = None
) -> list[_Piece]:
    """Token offsets of each text; those in ``cache`` are not tokenized again."""
    found = [cache.get(t) if cache is not None else None for t in texts]
    missing = [t for t, piece in zip(texts, found, strict=True) if piece is None]
    fresh: list[_Piece] = []
    if missing:
        enc = tokenizer.hf(missing, add_special_tokens=False, return_offsets_mapping=True)
        fresh = [
            _Piece(text, array("l", (a for a, _ in offsets)), array("l", (b for _, b in offsets)))
            for text, offsets in zip(missing, enc["offset_mapping"], strict=True)
        ]
    made = iter(fresh)
    return [piece if piece is not None else next(made) for piece in found]


def _keep_tail(piece: _Piece, k: int) -> tuple[str, int]:
    """The last ``k`` tokens of ``piece`` (from a line start when one is inside them)."""
    if k >= piece.n:
        return piece.text, piece.n
    if k <= 0:
        return "", 0
    start = piece.starts[piece.n - k]
    if start > 0 and piece.text[start - 1] != "\n":
        newline = piece.text.find("\n", start)
        if newline != -1 and newline + 1 < len(piece.text):
            start = newline + 1
    kept = piece.n - bisect.bisect_left(piece.starts, start)
    return piece.text[start:], kept


def _keep_head(piece: _Piece, k: int, *, whole_lines: bool = False) -> tuple[str, int]:
    """The first ``k`` tokens of ``piece`` (up to a line end when one is inside them)."""
    if k >= piece.n:
        return piece.text, piece.n
    if k <= 0:
        return "", 0
    end = piece.ends[k - 1]
    newline = piece.text.rfind("\n", 0, end)
    if newline != -1:
        end = newline + 1
    elif whole_lines:
        return "", 0
    kept = bisect.bisect_right(piece.ends, end)
    return piece.text[:end], kept


def pack_repo_prompt(
    tokenizer: PromptTokenizer,
    *,
    files: Sequence[RepoFile],
    prefix: str,
    suffix: str | None,
    budget: int,
    filename: str | None = None,
    budget_param: str = "max_tokens",
    cache: PieceCache | None = None,
) -> PackedPrompt:
    """The prompt (BOS included) in at most ``budget`` tokens. ``suffix=None``: plain
    completion of the current file; otherwise fill-in-the-middle. ``cache`` keeps the other
    files' tokens between requests."""
    variant = tokenizer.variant
    header = file_header(filename) if filename else ""
    pre, suf, head = _pieces(tokenizer, [prefix, suffix or "", header])
    blocks = _pieces(tokenizer, [render_file(f) for f in files], cache)
    if cache is not None:
        for block in blocks:
            cache.put(block)
    overhead = 1 + (3 if suffix is not None else 0) + head.n  # BOS, FIM tokens, header
    core = budget - overhead
    for _ in range(_MAX_REPACKS):
        if core < 1:
            raise ContextWindowExceededError(
                f"The window leaves {budget} tokens for the prompt after the tokens to generate; "
                f"that is too few for a prompt ({overhead + 1} at least).",
                param=budget_param,
            )
        if pre.n + suf.n <= core:
            keep_pre, keep_suf = pre.n, suf.n
        else:
            keep_suf = min(suf.n, core // 4)
            keep_pre = min(pre.n, core - keep_suf)
            keep_suf = min(suf.n, core - keep_pre)
        pre_text, pre_kept = _keep_tail(pre, keep_pre)
        suf_text, suf_kept = _keep_head(suf, keep_suf)
        room = core - pre_kept - suf_kept
        kept_files: list[RepoFile] = []
        whole = cut = dropped_file_tokens = 0
        for file, block in zip(files, blocks, strict=True):
            if block.n <= room:
                kept_files.append(file)
                room -= block.n
                whole += 1
                continue
            text, kept = _keep_head(block, room - 1, whole_lines=True)  # -1: the blank line
            content = text[len(file_header(file.filename)) :]
            if content:  # at least one whole line besides the header
                kept_files.append(RepoFile(file.filename, content))
                room -= kept + 1
                cut += 1
                dropped_file_tokens += block.n - kept - 1  # its blank line is kept
            else:
                dropped_file_tokens += block.n
        text = render_repo(
            kept_files, pre_text, None if suffix is None else suf_text, variant, filename=filename
        )
        ids = tokenizer.encode(text)
        if len(ids) <= budget:
            pre_dropped, suf_dropped = pre.n - pre_kept, suf.n - suf_kept
            return PackedPrompt(
                text=text,
                token_ids=ids,
                tokens_dropped=pre_dropped + suf_dropped + dropped_file_tokens,
                prefix_tokens_dropped=pre_dropped,
                suffix_tokens_dropped=suf_dropped,
                files_kept=whole,
                files_cut=cut,
                files_dropped=len(files) - whole - cut,
            )
        core -= len(ids) - budget
    raise ContextWindowExceededError(  # pragma: no cover - tokens never merge this badly
        "The repository context could not be packed into the window.", param=budget_param
    )
