"""The one error tree: every error Beacon raises on purpose derives from BeaconError."""

from __future__ import annotations


class BeaconError(Exception):
    """Root of Beacon's errors; carries an HTTP status and a machine-readable code."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, path: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, object]:
        """The wire shape of an error: `{"error": {"code", "message", "path"}}`."""
        return {"error": {"code": self.code, "message": self.message, "path": self.path}}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(BeaconError):
    """Input that does not fit the schema; `path` names the offending JSON path."""

    status = 422
    code = "invalid"


class DecodeError(BeaconError):
    """Bytes that are not valid JSON / msgpack, or a persisted record we cannot read."""

    status = 400
    code = "malformed"


class NotFoundError(BeaconError):
    """A named resource (ruleset, version, user) that does not exist."""

    status = 404
    code = "not_found"


class AuthError(BeaconError):
    """Missing or unknown credentials."""

    status = 401
    code = "unauthorized"


class ForbiddenError(BeaconError):
    """Known credentials without the scope the endpoint needs."""

    status = 403
    code = "forbidden"


class TooLargeError(BeaconError):
    """A body, batch or frame over its configured limit."""

    status = 413
    code = "too_large"


class UnsupportedMediaError(BeaconError):
    """A body in a format the endpoint does not take."""

    status = 415
    code = "unsupported_media_type"


class ConflictError(BeaconError):
    """A change other stored documents stand in the way of."""

    status = 409
    code = "conflict"


class ConnectorError(BeaconError):
    """An action sink failed; `retryable` says whether the delivery policy may try again."""

    status = 502
    code = "connector_failed"

    def __init__(self, message: str, *, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message, code=reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class UnavailableError(BeaconError):
    """Redis refused or failed a call of the request (down, out of memory, disk full): retry it."""

    status = 503
    code = "unavailable"


class BeaconTimeoutError(BeaconError):
    """An operation that ran out of time (Redis, a provider)."""

    status = 504
    code = "timeout"
