"""Per-key rate limits: requests per window (a moving window, on the ``limits`` library) and
tokens per window (a fixed window, kept here).

Tokens are reserved before generation starts: once a request is validated its reservation is
its prompt tokens plus ``max_tokens`` for each choice, all that it may use; a request whose
reservation does not fit in what the window has left waits (429 with Retry-After). When the
request ends, what it did not use is given back. So requests running together can never use
more than the limit between them, however many there are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from deepseek_serve.errors import InvalidRequestError, RateLimitError
from deepseek_serve.http.auth import ApiKey


@dataclass(slots=True, eq=False)
class _Window:
    start: float  # time.monotonic()
    used: int = 0  # reserved by running requests plus used by finished ones


@dataclass(frozen=True, slots=True)
class Reservation:
    key: ApiKey
    window: object  # the window it was taken from: a later window owes it nothing back
    tokens: int


class Quotas:
    def __init__(self) -> None:
        self._requests = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[str, RateLimitItem] = {}
        self._windows: dict[str, _Window] = {}  # token windows, by key name
        self._clock: Callable[[], float] = time.monotonic  # tests move it

    def _item(self, rate: str) -> RateLimitItem:
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = parse(rate)
        return item

    def _window(self, key: ApiKey, item: RateLimitItem) -> _Window:
        now = self._clock()
        window = self._windows.get(key.name)
        if window is None or now - window.start >= item.get_expiry():
            window = self._windows[key.name] = _Window(now)
        return window

    def _token_wait(self, window: _Window, item: RateLimitItem) -> float:
        return max(1.0, window.start + item.get_expiry() - self._clock())

    async def admit(self, key: ApiKey) -> None:
        """Count one request for ``key``; raise ``RateLimitError`` when it is over a limit (its
        token window spent, or its request limit reached)."""
        if key.token_limit is not None:
            item = self._item(key.token_limit)
            window = self._window(key, item)
            if window.used >= item.amount:
                raise RateLimitError(
                    f"Token rate limit {key.token_limit} reached for this key.",
                    retry_after=self._token_wait(window, item),
                    code="token_rate_limit_exceeded",
                )
        if key.request_limit is not None:
            item = self._item(key.request_limit)
            if not await self._requests.hit(item, "requests", key.name):
                stats = await self._requests.get_window_stats(item, "requests", key.name)
                raise RateLimitError(
                    f"Request rate limit {key.request_limit} reached for this key.",
                    retry_after=max(1.0, stats.reset_time - time.time()),
                )

    def reserve(self, key: ApiKey, tokens: int, *, param: str) -> Reservation | None:
        """Set aside ``tokens`` (all a validated request may use) from ``key``'s token window;
        None when the key has no token limit. ``param`` names the request's max_tokens."""
        if key.token_limit is None:
            return None
        item = self._item(key.token_limit)
        if tokens > item.amount:
            raise InvalidRequestError(
                f"This request may use {tokens} tokens (its prompt plus {param} for each "
                f"choice), more than this key's limit of {key.token_limit}; lower {param}.",
                param=param,
                code="token_rate_limit_exceeded",
            )
        window = self._window(key, item)
        if window.used + tokens > item.amount:
            left = max(0, item.amount - window.used)
            raise RateLimitError(
                f"This request may use {tokens} tokens (its prompt plus {param} for each "
                f"choice) and this key has {left} left of its limit {key.token_limit}.",
                retry_after=self._token_wait(window, item),
                code="token_rate_limit_exceeded",
            )
        window.used += tokens
        return Reservation(key, window, tokens)

    def settle(self, key: ApiKey, reservation: Reservation | None, used: int) -> None:
        """A request of ``key`` ended having used ``used`` tokens: give back what its
        reservation did not use (or charge what it had no reservation for)."""
        if key.token_limit is None:
            return
        if reservation is None:
            if used > 0:  # not reserved: charged after the fact, as it happened
                self._window(key, self._item(key.token_limit)).used += used
            return
        window = self._windows.get(key.name)
        if window is not None and window is reservation.window:
            window.used = max(0, window.used + used - reservation.tokens)


# Shared counters: a key's slots in the buffer are [token window start, tokens used, index of
# the oldest request time, then one request time per request its limit allows].
_START, _USED, _HEAD, _RING = 0, 1, 2, 3
MAX_SHARED_REQUESTS = 1_000_000  # request times kept per key (8 bytes each)


def shared_layout(keys: Sequence[ApiKey]) -> dict[str, tuple[int, int]]:
    """Each key's (offset, request slots) in the shared buffer; the same in every process
    because every process reads the same keys in the same order."""
    layout, offset = {}, 0
    for key in keys:
        slots = parse(key.request_limit).amount if key.request_limit else 0
        if slots > MAX_SHARED_REQUESTS:
            raise ValueError(
                f"key {key.name}: a request limit of more than {MAX_SHARED_REQUESTS} per window "
                "cannot be shared by several API processes"
            )
        layout[key.name] = (offset, slots)
        offset += _RING + slots
    return layout


def shared_size(layout: dict[str, tuple[int, int]]) -> int:
    return sum(_RING + slots for _, slots in layout.values())


class SharedQuotas(Quotas):
    """The same limits, counted in memory that several API processes share (``api_processes``):
    a key gets its limit once, whichever processes its requests reach. ``buffer`` is an array of
    doubles (``multiprocessing.RawArray("d", shared_size(layout))``), ``lock`` a
    ``multiprocessing.Lock``, both made by the parent before its API processes start. Every
    operation is a few array accesses under the lock. The request limit is an exact moving
    window (the time of each of the last ``amount`` requests); time is ``time.monotonic``, one
    clock for every process of the machine."""

    def __init__(
        self, layout: dict[str, tuple[int, int]], buffer: MutableSequence[float], lock: Any
    ) -> None:
        super().__init__()
        self._layout, self._buffer, self._lock = layout, buffer, lock

    def _roll(self, base: int, item: RateLimitItem, now: float) -> float:
        """The key's current token window (its start), a new one if the old one expired."""
        b = self._buffer
        if b[base + _START] == 0.0 or now - b[base + _START] >= item.get_expiry():
            b[base + _START], b[base + _USED] = now, 0.0
        return b[base + _START]

    def _token_retry(self, start: float, item: RateLimitItem, now: float) -> float:
        return max(1.0, start + item.get_expiry() - now)

    async def admit(self, key: ApiKey) -> None:
        base, slots = self._layout[key.name]
        b = self._buffer
        with self._lock:
            now = self._clock()
            if key.token_limit is not None:
                item = self._item(key.token_limit)
                start = self._roll(base, item, now)
                if b[base + _USED] >= item.amount:
                    raise RateLimitError(
                        f"Token rate limit {key.token_limit} reached for this key.",
                        retry_after=self._token_retry(start, item, now),
                        code="token_rate_limit_exceeded",
                    )
            if key.request_limit is not None and slots:
                expiry = self._item(key.request_limit).get_expiry()
                head = int(b[base + _HEAD])
                oldest = b[base + _RING + head]
                if oldest != 0.0 and now - oldest < expiry:  # `slots` requests in the window
                    raise RateLimitError(
                        f"Request rate limit {key.request_limit} reached for this key.",
                        retry_after=max(1.0, oldest + expiry - now),
                    )
                b[base + _RING + head] = now
                b[base + _HEAD] = float((head + 1) % slots)

    def reserve(self, key: ApiKey, tokens: int, *, param: str) -> Reservation | None:
        if key.token_limit is None:
            return None
        item = self._item(key.token_limit)
        if tokens > item.amount:
            return super().reserve(key, tokens, param=param)  # the 400 that says so
        base, _ = self._layout[key.name]
        b = self._buffer
        with self._lock:
            now = self._clock()
            start = self._roll(base, item, now)
            used = b[base + _USED]
            if used + tokens > item.amount:
                left = max(0, item.amount - int(used))
                raise RateLimitError(
                    f"This request may use {tokens} tokens (its prompt plus {param} for each "
                    f"choice) and this key has {left} left of its limit {key.token_limit}.",
                    retry_after=self._token_retry(start, item, now),
                    code="token_rate_limit_exceeded",
                )
            b[base + _USED] = used + tokens
        return Reservation(key, start, tokens)

    def settle(self, key: ApiKey, reservation: Reservation | None, used: int) -> None:
        if key.token_limit is None:
            return
        item = self._item(key.token_limit)
        base, _ = self._layout[key.name]
        b = self._buffer
        with self._lock:
            start = self._roll(base, item, self._clock())
            if reservation is None:
                b[base + _USED] += used
            elif reservation.window == start:
                b[base + _USED] = max(0.0, b[base + _USED] + used - reservation.tokens)
