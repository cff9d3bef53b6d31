"""Interactive before batch: request priorities under vLLM's priority scheduling.

With ``--engine-arg scheduling_policy=priority`` the engine runs lower ``priority`` values first
(and may preempt higher ones). Editor traffic (``/infill``, single-prompt ``/v1/completions``,
``/api/v1/completion`` and ``/api/v1/insertion``) then gets ``INTERACTIVE_PRIORITY`` unless the
request names its own; chat and multi-prompt batches keep 0. Under the default first-come policy
priorities are not used.
"""

from __future__ import annotations

from deepseek_serve.settings import Settings

INTERACTIVE_PRIORITY = -10


def priority_scheduling(settings: Settings) -> bool:
    return settings.engine_args.get("scheduling_policy") == "priority"


def request_priority(settings: Settings, requested: int, *, interactive: bool) -> int:
    """The engine priority of a request: its own if given, else by kind."""
    if requested != 0 or not interactive or not priority_scheduling(settings):
        return requested
    return INTERACTIVE_PRIORITY
