"""One exception hierarchy for everything a client can be told, and its OpenAI error shape.

Each class carries its HTTP status and OpenAI error ``type``; ``to_payload`` is the only place
that turns an exception into ``{"error": {"message", "type", "param", "code"}}``. A 500 never
echoes internal text.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code = 500
    error_type = "internal_server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def to_payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextWindowExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class UnsupportedMediaTypeError(InvalidRequestError):
    # OpenAI answers a wrong content type with 400, not 415; clients only handle 400.
    default_code = "unsupported_content_type"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(APIError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class MethodNotAllowedError(APIError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeoutError(APIError):
    """The request head or body did not arrive in time; the connection is closed."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class URITooLongError(APIError):
    status_code = 414
    error_type = "invalid_request_error"
    default_code = "uri_too_long"


class HeadersTooLargeError(APIError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "headers_too_large"


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": _seconds(retry_after)})


class SupersededError(APIError):
    """A newer request of the same editor session replaced this one (its engine work is
    aborted)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "superseded"

    def __init__(
        self, message: str = "A newer request of the same session replaced this one."
    ) -> None:
        super().__init__(message, param="session_id")


class ServiceUnavailableError(APIError):
    status_code = 503
    error_type = "service_unavailable_error"


class EngineDeadError(ServiceUnavailableError):
    default_code = "engine_dead"

    def __init__(self, message: str = "The inference engine has stopped; retry later.") -> None:
        super().__init__(message)


class OverloadedError(ServiceUnavailableError):
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": _seconds(retry_after)})


class ShuttingDownError(ServiceUnavailableError):
    default_code = "shutting_down"

    def __init__(self, message: str = "The server is shutting down; retry on another.") -> None:
        super().__init__(message)


class ReplicaDiedError(ServiceUnavailableError):
    """The engine replica serving the request went away mid-request (scale-out on Ray)."""

    default_code = "replica_died"

    def __init__(
        self, message: str = "The engine replica serving this request stopped; retry."
    ) -> None:
        super().__init__(message)


class InternalError(APIError):
    """Anything unexpected. The message given here is logged, never sent."""

    def to_payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": "Internal server error.",
                "type": self.error_type,
                "param": None,
                "code": None,
            }
        }


def as_api_error(exc: BaseException) -> APIError:
    """The client-facing form of any exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}")


def _seconds(value: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, int(-(-value // 1))))
