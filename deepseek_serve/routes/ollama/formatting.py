"""Engine outputs to Ollama's answers: NDJSON lines for ``/api/generate`` and ``/api/chat``,
and the model cards of ``/api/tags`` and ``/api/show``.

Every line is one whole object (ollama-rs parses each transport chunk on its own). Stream lines
carry the new text; the last one has ``done: true``, ``done_reason`` and the counts and
durations (nanoseconds), with zero values left out as Ollama does. ``context`` is never sent:
clients that chain it send the whole prompt instead (Continue, Tabby and twinny do).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseek_serve.engine import EngineOutput
from deepseek_serve.http.streaming import ndjson_line
from deepseek_serve.prompts.variant import Family, Kind, Variant


def created_at(ns: int | None = None) -> str:
    """Go's RFC3339Nano in UTC, as Ollama writes ``created_at``: trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


@dataclass(slots=True)
class OllamaFormatter:
    """``chat``: text goes in ``message.content`` (every line has a ``message``, Continue
    destructures it), else in ``response``."""

    model: str  # the name the client asked for, echoed as Ollama does
    prompt_tokens: int
    chat: bool = False
    warmup: bool = False  # num_predict 0: the prompt is processed, nothing is returned
    clock: Callable[[], int] = time.monotonic_ns
    started: int = field(init=False)
    first: int | None = None
    ended: int | None = None
    generated: int = 0
    finish: str | None = None
    parts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def _head(self, text: str, done: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        body["done"] = done
        return body

    def _take(self, out: EngineOutput) -> str:
        now = self.clock()
        self.first = now if self.first is None else self.first
        self.ended = now
        text = ""
        for seq in out.sequences[:1]:
            if seq.finish_reason is not None:
                self.finish = seq.finish_reason
            if not self.warmup:
                text = seq.text
                self.generated += len(seq.token_ids)
        return text

    def final(self, text: str, reason: str | None = None) -> dict[str, Any]:
        body = self._head(text, True)
        body["done_reason"] = reason or ("stop" if self.finish == "stop" else "length")
        first = self.first if self.first is not None else self.clock()
        ended = self.ended if self.ended is not None else first
        counts = {
            "total_duration": self.clock() - self.started,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": first - self.started,
            "eval_count": self.generated,
            "eval_duration": ended - first,
        }
        body.update((k, v) for k, v in counts.items() if v)  # Ollama's omitempty
        return body

    async def frames(
        self, outputs: AsyncIterator[tuple[int, EngineOutput]]
    ) -> AsyncIterator[bytes]:
        async for _, out in outputs:
            text = self._take(out)
            if text:
                yield ndjson_line(self._head(text, False))
        yield ndjson_line(self.final(""))

    async def collect(self, outputs: AsyncIterator[tuple[int, EngineOutput]]) -> Any:
        async for _, out in outputs:
            self.parts.append(self._take(out))
        return self.final("".join(self.parts))


def tag_name(served: str) -> str:
    """The served model as ``/api/tags`` lists it: Ollama names carry a tag."""
    return served if ":" in served else f"{served}:latest"


def _family(variant: Variant) -> str:
    return "llama" if variant.family is Family.CODER_V1 else "deepseek2"


def details(variant: Variant) -> dict[str, Any]:
    family = _family(variant)
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    }


def tags(served: str, variant: Variant, created: int) -> dict[str, Any]:
    name = tag_name(served)
    card = {
        "name": name,
        "model": name,
        "modified_at": created_at(created * 1_000_000_000),
        "size": 0,  # weights live with the engine; ollama-rs needs a number
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": details(variant),
    }
    return {"models": [card]}


def template(variant: Variant) -> str:
    """What ``/api/generate`` renders, as an Ollama (Go) template. It mentions ``.Suffix``:
    Continue turns FIM on only when it does."""
    s = variant.special
    fim = f"{s.fim_begin_text}{{{{ .Prompt }}}}{s.fim_hole_text}{{{{ .Suffix }}}}{s.fim_end_text}"
    if variant.kind is Kind.BASE:
        chat = "{{ .Prompt }}"
    elif variant.family is Family.CODER_V1:
        chat = "{{ .System }}### Instruction:\n{{ .Prompt }}\n### Response:\n"
    else:
        chat = "{{ if .System }}{{ .System }}\n\n{{ end }}User: {{ .Prompt }}\n\nAssistant:"
    return f"{{{{- if .Suffix }}}}{fim}{{{{- else }}}}{chat}{{{{- end }}}}"


def show(served: str, model: str, variant: Variant, n_ctx: int, created: int) -> dict[str, Any]:
    family = _family(variant)
    capabilities = ["completion", "insert"]
    return {
        "license": "",
        "modelfile": f"# served by deepseek_serve\nFROM {model}\n",
        "parameters": f"num_ctx {n_ctx}",
        "template": template(variant),
        "details": details(variant),
        "model_info": {
            "general.architecture": family,
            "general.basename": served,
            f"{family}.context_length": n_ctx,
        },
        "capabilities": capabilities,
        "modified_at": created_at(created * 1_000_000_000),
    }
