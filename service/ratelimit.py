"""Per-key request rate: a token bucket per caller, refused with 429 and when to retry.

Each key's bucket holds at most `burst` tokens and refills at `rate_per_s`; a request takes
one. Buckets exist only for configured keys, so their number is bounded by the settings.

>>> now = [0.0]
>>> limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=lambda: now[0])
>>> limiter.acquire("feeder"); limiter.acquire("feeder")
>>> try:
...     limiter.acquire("feeder")
... except RateLimitedError as error:
...     error.retry_after_s
1.0
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import RateLimitedError


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key; `acquire(key)` takes a token or raises RateLimitedError."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait_s = (1.0 - bucket.tokens) / self.rate_per_s
            raise RateLimitedError(
                f"key {key!r} is over {self.rate_per_s:g} requests per second; "
                f"retry in {wait_s:.3g} s",
                retry_after_s=wait_s,
            )
        bucket.tokens -= 1.0
