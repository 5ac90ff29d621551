"""Who pinned what (issue 23): pins are counted per tenant, so one tenant's pins cannot fill
a serving budget and starve everyone else's requests.

A task (by content digest) stays pinned while any tenant pins it. Each tenant's pins may take
at most `share` of the budget they live in (the dense-task cache or the lowrank pool); the
caches themselves keep `1 - share` as the most that all pins together may take, so a task that
nobody pinned always finds room.
"""

from __future__ import annotations

import threading

from app.errors import ConflictError

SHARE_SETTING = "KILOTASK_SERVING_PIN_SHARE"


class PinLedger:
    def __init__(self, share: float) -> None:
        self.share = share
        self._held: dict[str, dict[str, int]] = {}  # tenant -> {digest: bytes}
        self._bytes: dict[str, int] = {}  # tenant -> the sum of its pins' bytes
        self._tenants: dict[str, int] = {}  # digest -> how many tenants pin it
        self._lock = threading.Lock()

    def held_bytes(self, tenant: str) -> int:
        with self._lock:
            return self._bytes.get(tenant, 0)

    def holds(self, tenant: str, digest: str) -> bool:
        with self._lock:
            return digest in self._held.get(tenant, {})

    def pinned_by_anyone(self, digest: str) -> bool:
        with self._lock:
            return digest in self._tenants

    def add(self, tenant: str, digest: str, nbytes: int, budget: int, budget_mb: float) -> None:
        """Record `tenant`'s pin of `digest`, or ConflictError (409) past its share."""
        with self._lock:
            held = self._held.setdefault(tenant, {})
            others = self._bytes.get(tenant, 0) - held.get(digest, 0)
            if others + nbytes > self.share * budget:
                if not held:
                    del self._held[tenant]
                raise ConflictError(
                    f"cannot pin: this tenant's pins may take {self.share:.0%} of the serving "
                    f"budget ({budget_mb * self.share:.1f} of {budget_mb:g} MB, "
                    f"{SHARE_SETTING}); it holds {others / 2**20:.2f} MB and this task needs "
                    f"{nbytes / 2**20:.2f} MB. Unpin one (DELETE /v1/tasks/{{id}}/pin)",
                    code="pin_share_full",
                )
            if digest not in held:
                self._tenants[digest] = self._tenants.get(digest, 0) + 1
            self._bytes[tenant] = others + nbytes
            held[digest] = nbytes

    def remove(self, tenant: str, digest: str) -> tuple[bool, bool]:
        """Drop `tenant`'s pin: (whether it had one, whether any tenant still pins `digest`)."""
        with self._lock:
            held = self._held.get(tenant, {})
            nbytes = held.pop(digest, None)
            if nbytes is not None:
                self._bytes[tenant] -= nbytes
                self._tenants[digest] -= 1
                if not self._tenants[digest]:
                    del self._tenants[digest]
            if not held:
                self._held.pop(tenant, None)
                self._bytes.pop(tenant, None)
            return nbytes is not None, digest in self._tenants
