"""Repository-level prompts and their packing into a token budget, with the real tokenizers."""

from __future__ import annotations

import pytest

from deepseek_serve.errors import ContextWindowExceededError
from deepseek_serve.prompts.packing import PieceCache, pack_repo_prompt
from deepseek_serve.prompts.tokenizer import PromptTokenizer, TokenizerSetup
from deepseek_serve.templates.repo import RepoFile, render_file, render_repo

FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
FILES = [
    RepoFile("utils.py", "def load():\n    return [1, 2]"),  # no final newline: one is added
    RepoFile("model.py", "class M:\n    pass\n"),
]
PREFIX = "from utils import load\n\ndef main():\n    "
SUFFIX = "\n\nmain()\n"

REPO_TEXT = (
    "#utils.py\ndef load():\n    return [1, 2]\n\n"
    "#model.py\nclass M:\n    pass\n\n"
    "#main.py\nfrom utils import load\n\ndef main():\n    "
)
# Golden ids (DeepSeek-Coder v1 tokenizer): BOS, then the README's repository layout.
V1_PLAIN = [
    32013, 2, 10518, 13, 4016, 185, 1551, 3299, 10942, 185, 315, 967, 821, 16, 11, 207, 17, 60,
    185, 185, 2, 5646, 13, 4016, 185, 2176, 363, 25, 185, 315, 1445, 185, 185, 2, 5609, 13, 4016,
    185, 3154, 3990, 82, 1659, 3299, 185, 185, 1551, 1959, 10942, 185, 251,
]  # fmt: skip
V1_FIM = [
    32013, 32016, *V1_PLAIN[1:], 32015, 185, 185, 5609, 822, 185, 32017,
]  # fmt: skip
V2_PLAIN = [
    100000, 2, 10505, 13, 4027, 185, 1558, 3313, 10935, 185, 300, 972, 825, 16, 11, 207, 17, 60,
    185, 185, 2, 5655, 13, 4027, 185, 2186, 364, 25, 185, 300, 1452, 185, 185, 2, 5622, 13, 4027,
    185, 3163, 43244, 1666, 3313, 185, 185, 1558, 1969, 10935, 185, 251,
]  # fmt: skip
V2_FIM = [
    100000, 100003, *V2_PLAIN[1:], 100002, 185, 185, 5622, 826, 185, 100004,
]  # fmt: skip


def test_render_follows_the_readme_layout(v1_setup: TokenizerSetup) -> None:
    variant = v1_setup.variant
    assert render_repo(FILES, PREFIX, None, variant, filename="main.py") == REPO_TEXT
    fim = render_repo(FILES, PREFIX, SUFFIX, variant, filename="main.py")
    assert fim == f"{FIM_BEGIN}{REPO_TEXT}{FIM_HOLE}{SUFFIX}{FIM_END}"
    # no current filename: no header; no files: the plain FIM prompt of /v1/completions
    assert render_repo([], "a", "b", variant) == f"{FIM_BEGIN}a{FIM_HOLE}b{FIM_END}"


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_golden_ids_when_everything_fits(
    family: str, v1_setup: TokenizerSetup, v2_setup: TokenizerSetup
) -> None:
    setup, plain, fim = (
        (v1_setup, V1_PLAIN, V1_FIM) if family == "v1" else (v2_setup, V2_PLAIN, V2_FIM)
    )
    tok = setup.prompt_tokenizer
    packed = pack_repo_prompt(
        tok, files=FILES, prefix=PREFIX, suffix=None, budget=1000, filename="main.py"
    )
    assert packed.text == REPO_TEXT and packed.token_ids == plain
    assert packed.tokens_dropped == 0 and packed.files_kept == 2
    packed = pack_repo_prompt(
        tok, files=FILES, prefix=PREFIX, suffix=SUFFIX, budget=1000, filename="main.py"
    )
    assert packed.text == f"{FIM_BEGIN}{REPO_TEXT}{FIM_HOLE}{SUFFIX}{FIM_END}"
    assert packed.token_ids == fim
    # the exact budget still fits; one less cuts the lowest-priority file to its first lines
    exact = pack_repo_prompt(
        tok, files=FILES, prefix=PREFIX, suffix=SUFFIX, budget=len(fim), filename="main.py"
    )
    assert exact.token_ids == fim
    tighter = pack_repo_prompt(
        tok, files=FILES, prefix=PREFIX, suffix=SUFFIX, budget=len(fim) - 1, filename="main.py"
    )
    assert "#utils.py" in tighter.text and "#model.py\nclass M:\n\n#main.py" in tighter.text
    assert tighter.files_kept == 1 and tighter.files_cut == 1 and tighter.files_dropped == 0
    model_block = tok.hf.encode("#model.py\nclass M:\n    pass\n\n", add_special_tokens=False)
    model_kept = tok.hf.encode("#model.py\nclass M:\n\n", add_special_tokens=False)
    assert tighter.tokens_dropped == len(model_block) - len(model_kept)
    assert tighter.token_ids == tok.encode(tighter.text)


def _lines(name: str, n: int) -> str:
    return "".join(f"{name}_{i} = compute({i}, '{name}')\n" for i in range(n))


def test_huge_context_is_packed_nearest_the_cursor_first(v1_setup: TokenizerSetup) -> None:
    tok: PromptTokenizer = v1_setup.prompt_tokenizer
    prefix = _lines("before", 3000) + "def target(x):\n    return x"
    suffix = "  # cursor line end\n" + _lines("after", 3000)
    files = [RepoFile(f"dep{i}.py", _lines(f"dep{i}", 400)) for i in range(20)]
    full = sum(len(tok.hf.encode(t, add_special_tokens=False)) for t in (prefix, suffix))
    for budget in (4000, 1000, 200, 40):
        packed = pack_repo_prompt(
            tok, files=files, prefix=prefix, suffix=suffix, budget=budget, filename="t.py"
        )
        assert len(packed.token_ids) <= budget
        assert packed.token_ids == tok.encode(packed.text)
        head, rest = packed.text.split(FIM_HOLE)
        assert head.endswith("def target(x):\n    return x")  # the cursor's surroundings stay
        assert rest.startswith("  # cursor line end\n")
        # prefix:suffix about 3:1 when both are cut, and no dependency fits beside them
        assert packed.prefix_tokens_dropped > 0 and packed.suffix_tokens_dropped > 0
        kept_pre = len(tok.hf.encode(head.split("#t.py\n")[1], add_special_tokens=False))
        kept_suf = len(tok.hf.encode(rest.removesuffix(FIM_END), add_special_tokens=False))
        assert kept_pre >= 2 * kept_suf or budget < 100  # whole lines matter at tiny sizes
        assert packed.files_kept == 0 and packed.files_cut + packed.files_dropped == 20
        assert packed.tokens_dropped >= full - budget
        kept_files = head.removeprefix(FIM_BEGIN).split("#t.py\n")[0]
        all_files = sum(
            len(tok.hf.encode(f"#{f.filename}\n{f.text}\n", add_special_tokens=False))
            for f in files
        )
        assert packed.tokens_dropped == (
            packed.prefix_tokens_dropped
            + packed.suffix_tokens_dropped
            + all_files
            - len(tok.hf.encode(kept_files, add_special_tokens=False))
        )


def test_files_are_kept_in_the_order_given_the_last_one_cut_at_a_line(
    v1_setup: TokenizerSetup,
) -> None:
    tok = v1_setup.prompt_tokenizer
    files = [RepoFile(f"dep{i}.py", _lines(f"dep{i}", 50)) for i in range(4)]
    packed = pack_repo_prompt(tok, files=files, prefix="x = ", suffix=None, budget=1500)
    assert len(packed.token_ids) <= 1500
    assert packed.files_kept >= 1 and packed.files_cut == 1
    order = [f"#dep{i}.py\n" in packed.text for i in range(4)]
    assert order == sorted(order, reverse=True)  # a prefix of the list, in order
    cut = files[packed.files_kept]
    cut_text = packed.text.split(f"#{cut.filename}\n")[1].split("\n\n")[0] + "\n"
    assert cut.text.startswith(cut_text) and cut_text.endswith(")\n")  # whole lines
    assert packed.text.endswith("\n\nx = ")


def test_a_budget_without_room_is_refused(v1_setup: TokenizerSetup) -> None:
    with pytest.raises(ContextWindowExceededError) as info:
        pack_repo_prompt(
            v1_setup.prompt_tokenizer, files=[], prefix="a", suffix="b", budget=4,
            budget_param="n_predict",
        )  # fmt: skip
    assert info.value.param == "n_predict"


def test_the_cache_keeps_files_tokenized_between_requests(v1_setup: TokenizerSetup) -> None:
    tok = v1_setup.prompt_tokenizer
    files = [RepoFile(f"dep{i}.py", _lines(f"dep{i}", 30)) for i in range(3)]
    cache = PieceCache(max_entries=2)
    plain = pack_repo_prompt(tok, files=files, prefix="x = ", suffix="\n", budget=900)
    first = pack_repo_prompt(tok, files=files, prefix="x = ", suffix="\n", budget=900, cache=cache)
    assert first == plain and len(cache) == 2  # the oldest entry was evicted
    block = render_file(files[2])
    cached = cache.get(block)
    assert cached is not None and cached.n == len(tok.hf.encode(block, add_special_tokens=False))
    again = pack_repo_prompt(tok, files=files, prefix="y = ", suffix="\n", budget=900, cache=cache)
    assert again.token_ids == tok.encode(again.text) and cache.get(block) is cached
    small = PieceCache(max_chars=40)  # too large to cache: never stored
    pack_repo_prompt(tok, files=files, prefix="x", suffix=None, budget=900, cache=small)
    assert len(small) == 0
