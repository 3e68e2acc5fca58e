"""Progress lines for long loops, throttled so that logs stay readable."""

from __future__ import annotations

import time
from typing import Callable


class Progress:
    def __init__(self, what: str, total: int, emit: Callable[[str], None], every_s: float = 5.0):
        self.what, self.total, self.emit, self.every_s = what, total, emit, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.emit(f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s, ~{left:.0f} s left)")
