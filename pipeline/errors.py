"""Errors are values with codes: the codes a caller sees in a terminal Response."""

from __future__ import annotations

RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
BUDGET_EXCEEDED = "budget_exceeded"
BREAKER_OPEN = "breaker_open"
INVALID_REQUEST = "invalid_request"
PROVIDER_ERROR = "provider_error"
AUTH_ERROR = "auth_error"
OVERLOADED = "overloaded"
UNKNOWN_MODEL = "unknown_model"
MODEL_NOT_ALLOWED = "model_not_allowed"
DUPLICATE = "duplicate"
# The caller went away (an HTTP client disconnected) and the request was stopped.
CANCELLED = "cancelled"
# The gateway could not pass the request or its answer on (an output the broker refused);
# the message says why. Not retryable as it is.
INTERNAL_ERROR = "internal_error"
# Response metadata of a duplicate notice: "in_flight" (the original's response is still to
# come) or "completed" (it was already published).
DUPLICATE_STATE = "llmpipe.duplicate_of"

RETRYABLE = frozenset({RATE_LIMITED, TIMEOUT, PROVIDER_ERROR, OVERLOADED})


class GatewayError(Exception):
    """A failure with a caller-facing code. ``message`` must never contain a secret."""

    code = PROVIDER_ERROR

    def __init__(self, message: str, code: str | None = None, *, retry_after_s: float | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.retry_after_s = retry_after_s
        self.status = status
        self.elapsed_ms = 0      # provider time spent before this failure

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class Rejected(GatewayError):
    """Intake refuses the request; the caller gets a terminal error response."""

    code = INVALID_REQUEST
