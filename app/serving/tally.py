"""Running count/sum/max: what the metrics need, in constant memory for a long-lived server."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Tally:
    count: int = 0
    total: float = 0.0
    max: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, value: float) -> None:
        with self._lock:
            self.count += 1
            self.total += value
            self.max = max(self.max, value)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0
