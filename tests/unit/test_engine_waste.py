"""Tokens decoded for requests that already ended (issue: IDE traffic wastes nothing)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from deepseek_serve.engine import count_abandoned_tokens


class OutputProcessor:
    """The two members of vLLM's OutputProcessor the counter relies on."""

    def __init__(self) -> None:
        self.request_states: dict[str, object] = {}
        self.seen: list[list[str]] = []

    def process_outputs(self, outputs: list[Any], *args: Any, **kwargs: Any) -> str:
        self.seen.append([o.request_id for o in outputs])
        return "processed"


def out(request_id: str, tokens: int) -> Any:
    return SimpleNamespace(request_id=request_id, new_token_ids=list(range(tokens)))


def test_outputs_of_dropped_requests_are_counted_and_still_processed() -> None:
    counter = Counter("abandoned", "test", registry=CollectorRegistry())
    processor = OutputProcessor()
    processor.request_states = {"live": object()}
    count_abandoned_tokens(processor, counter)
    step = [out("live", 1), out("gone", 1), out("gone-too", 3)]
    assert processor.process_outputs(step, 1.0, None) == "processed"
    assert processor.seen == [["live", "gone", "gone-too"]]  # vLLM still sees every output
    assert counter._value.get() == 4
    processor.request_states["gone"] = object()  # now live: not counted
    processor.process_outputs([out("gone", 2), out("live", 5)])
    assert counter._value.get() == 4
