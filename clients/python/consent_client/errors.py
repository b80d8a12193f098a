"""Typed exceptions, decoded from the gRPC status and its rich details
(google.rpc.BadRequest, ErrorInfo, RetryInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """A field of a request and the rule it broke."""

    field: str
    description: str


class ConsentError(Exception):
    """A failed call. `code` is the gRPC status code; `message` the server's words."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: Optional[grpc.StatusCode] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(ConsentError):
    """The request broke the API's rules; `violations` names each field and rule."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: list[FieldViolation]):
        super().__init__(message)
        self.violations = violations


class NotFound(ConsentError):
    """Something the request names does not exist (`kind`, `id` when told)."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, message: str, kind: Optional[str] = None, id: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.id = id


class AlreadyExists(ConsentError):
    """It exists already, or an idempotency key was reused for another request."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ConsentError):
    """Valid, but the state does not allow it (an erased subject...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ConsentError):
    """The key lacks the scope this call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ConsentError):
    """No key, or an unknown, revoked or expired one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ConsentError):
    """A limit was reached; retry after `retry_after` seconds when told."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ConsentError):
    """The service cannot answer now (what is left after the client's retries). Never
    read it as "allowed"."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(ConsentError):
    """The call's deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def from_rpc_error(error: grpc.RpcError) -> ConsentError:
    """The typed exception for a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    message = message or ""
    violations: list[FieldViolation] = []
    retry_after: Optional[float] = None
    info: dict[str, str] = {}
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                error_info = error_details_pb2.ErrorInfo()
                detail.Unpack(error_info)
                info = dict(error_info.metadata)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message, violations)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message, info.get("kind"), info.get("id"))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message, retry_after)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(message, retry_after)
    simple = {
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    }
    kind = simple.get(code)
    if kind is not None:
        return kind(message)
    return ConsentError(message, code=code)


def from_stream_error(error) -> ConsentError:
    """The typed exception for a CheckStream request answered with `error`."""
    code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(
            error.message,
            [FieldViolation(v.field, v.description) for v in error.field_violations],
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(error.message)
    return ConsentError(error.message, code=code)
