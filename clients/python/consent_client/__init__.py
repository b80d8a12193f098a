"""Python client of consentd, the consent ledger.

    from consent_client import ConsentClient

    client = ConsentClient("127.0.0.1:50051", api_key="ck_...")
    if client.allowed("+32470000001", "call_recording"):
        ...
    allowed_ids = list(client.filter_allowed(subject_ids, "analytics"))
    # A person by one of their ids (a cookie, a phone number) linked to a subject:
    client.link_identity("acct-7781", identity.phone("+32 470 12 34 56"))
    client.allowed(identity.phone("0032470123456"), "call_recording")

The gRPC stubs (consent_client._pb) are generated from the repository's proto/ by
generate_stubs.py (run by the package build).
"""

try:
    from consent_client._pb.consent.v1 import consent_service_pb2 as _probe  # noqa: F401
except ImportError as e:  # pragma: no cover - a source checkout without generated stubs
    raise ImportError(
        "consent_client's gRPC stubs are missing: run `python generate_stubs.py` in clients/python "
        "(needs grpcio-tools), or install the package with pip"
    ) from e

from consent_client._pb.consent.v1 import consent_service_pb2 as pb
from consent_client._pb.consent.v1 import types_pb2 as types
from consent_client import identity
from consent_client.client import ConsentClient, RetryPolicy, Snapshot
from consent_client.errors import (
    AlreadyExists,
    ConsentError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "ConsentClient",
    "ConsentError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "Snapshot",
    "Unauthenticated",
    "Unavailable",
    "identity",
    "pb",
    "types",
]
