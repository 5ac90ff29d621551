"""Tensors that depend only on a seed (each target's A, a head target's seeded weight), kept in
one LRU under a byte cap. Seeds are chosen by users, anywhere in [0, 2³²): without a cap, every
seed ever served would stay (74 KB of A per seed on MiniLM-L6 at rank 4, 4.7 MB on BERT-base
at rank 64). A tensor a running batch still holds outlives its eviction only until that batch
ends."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class SeedCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        key: Hashable,
        make: Callable[[], torch.Tensor],
        enough: Callable[[torch.Tensor], bool] | None = None,
    ) -> torch.Tensor:
        """The tensor under `key`, made (outside the lock) on a miss, or when `enough` says the
        one kept will not do (an A of a smaller rank than asked: the new one replaces it)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None and (enough is None or enough(found)):
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        made = make()
        with self._lock:
            old = self._entries.pop(key, None)
            self.nbytes -= 0 if old is None else _size(old)
            self._entries[key] = made
            self.nbytes += _size(made)
            while self.nbytes > self.max_bytes and len(self._entries) > 1:
                _, gone = self._entries.popitem(last=False)
                self.nbytes -= _size(gone)
                self.evictions += 1
        return made

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self) -> dict:
        return {
            "seed_tensors": len(self._entries),
            "seed_mb": self.nbytes / 2**20,
            "seed_budget_mb": self.max_bytes / 2**20,
            "seed_hits": self.hits,
            "seed_misses": self.misses,
            "seed_evictions": self.evictions,
        }


def _size(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
