"""Per-key token buckets for write requests: a leaked or buggy client cannot flood the catalog."""

from __future__ import annotations

import threading
import time


class RateLimitedError(RuntimeError):
    """Too many write requests for this key (429); `retry_after` says when one will pass."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """`per_minute` requests per key on average, bursts of up to `burst`."""

    def __init__(self, per_minute: float, burst: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one token of `key_id`, or raise RateLimitedError."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                wait = (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
                self._buckets[key_id] = (tokens, now)
                raise RateLimitedError(f"too many write requests for this key; retry in {wait:.1f} s", wait)
            self._buckets[key_id] = (tokens - 1.0, now)
