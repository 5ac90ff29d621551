"""Service-level errors. Repository functions and dependencies raise these; app/api/errors.py
is the only place that turns them (and engine errors) into HTTP statuses."""

import math


class KilotaskError(Exception):
    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class NotFoundError(KilotaskError):
    code = "not_found"


class ConflictError(KilotaskError):
    code = "conflict"


class InvalidStateError(KilotaskError):
    code = "invalid_state"


class IdempotencyMismatchError(KilotaskError):
    code = "idempotency_key_reused"


class UnauthorizedError(KilotaskError):
    code = "unauthorized"


class PayloadTooLargeError(KilotaskError):
    code = "payload_too_large"


class InvalidInputError(KilotaskError):
    code = "invalid_input"


class ServiceBusyError(KilotaskError):
    """503: retry later; `retry_after` (seconds), where known, goes out as Retry-After."""

    code = "service_busy"

    def __init__(
        self, message: str, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code)
        self.retry_after = None if retry_after is None else max(1, math.ceil(retry_after))


class RateLimitedError(KilotaskError):
    """A per-tenant limit is reached; `retry_after` (seconds) goes out as Retry-After."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code)
        self.retry_after = max(1, math.ceil(retry_after))
