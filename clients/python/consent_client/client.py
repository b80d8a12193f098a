"""ConsentClient: a typed wrapper over the consent.v1 gRPC API for Python pipelines."""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import grpc

from consent_client import errors
from consent_client._pb.consent.v1 import (
    admin_service_pb2_grpc,
    consent_service_pb2 as cs,
    consent_service_pb2_grpc,
    identity_service_pb2 as ids,
    identity_service_pb2_grpc,
    subject_rights_service_pb2_grpc,
    types_pb2,
)

#: Who a request is about: a subject id (str), or an identity of the person
#: (consent.v1.Identity, made with consent_client.identity), resolved by the service to the
#: subject it is linked to.
Subject = Any


def _subject(subject: Subject) -> dict:
    """The request fields naming `subject`: subject_id for a str, identity for an Identity."""
    if isinstance(subject, str):
        return {"subject_id": subject}
    if isinstance(subject, types_pb2.Identity):
        return {"identity": subject}
    raise TypeError(f"a subject is a subject id (str) or a consent.v1.Identity, not {type(subject).__name__}")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on UNAVAILABLE only, with jittered exponential backoff (or the server's
    RetryInfo delay): reads always, RecordConsent and WithdrawConsent with an idempotency key
    (made per logical write when the caller gives none)."""

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delay(self, attempt: int, error: errors.ConsentError) -> float:
        asked = getattr(error, "retry_after", None)
        if asked:
            return asked
        full = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return full * (0.5 + 0.5 * random.random())


class Snapshot:
    """A snapshot being read: `header` (the revision to watch from, the purposes in the order
    of each subject's decisions, the decisions of subjects it does not list), then iterate
    it for the subjects (consent.v1.SubjectDecisions), in byte order of their ids. If the
    service becomes unavailable, reading goes on after the last subject received, at the
    same revision."""

    def __init__(self, client: "ConsentClient", request: cs.ExportSnapshotRequest):
        self._client = client
        self._request = request
        self._stream, self.header = client._open_snapshot(request)
        self._request.at_revision = self.header.revision

    @property
    def revision(self) -> int:
        """The ledger revision the snapshot reflects."""
        return self.header.revision

    def __iter__(self) -> Iterator[Any]:
        failures = 0
        while True:
            try:
                for message in self._stream:
                    part = message.WhichOneof("part")
                    if part == "chunk":
                        failures = 0
                        for subject in message.chunk.subjects:
                            self._request.after_subject_id = subject.subject_id
                            yield subject
                    elif part == "end":
                        return
                raise errors.Unavailable("the snapshot stream ended before its end")
            except grpc.RpcError as e:
                error = errors.from_rpc_error(e)
            except errors.Unavailable as e:
                error = e
            failures += 1
            if not isinstance(error, errors.Unavailable) or failures >= self._client.retry.max_attempts:
                raise error
            time.sleep(self._client.retry.delay(failures, error))
            self._stream, header = self._client._open_snapshot(self._request)
            if header.revision != self._request.at_revision:
                raise errors.ConsentError(
                    f"the resumed snapshot is at revision {header.revision}, not {self._request.at_revision}"
                )


class ConsentClient:
    """A connection to consentd.

    >>> client = ConsentClient("127.0.0.1:50051", api_key="ck_...")   # doctest: +SKIP
    >>> client.check("+32470000001", "call_recording").allowed        # doctest: +SKIP
    True
    """

    def __init__(
        self,
        url: str = "127.0.0.1:50051",
        api_key: Optional[str] = None,
        *,
        tls_ca: Optional[bytes] = None,
        timeout: Optional[float] = None,
        retry: RetryPolicy = RetryPolicy(),
    ):
        target = url.split("://", 1)[-1]
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        if tls_ca is not None or url.startswith("https://"):
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.timeout = timeout
        self.retry = retry
        self.consent = consent_service_pb2_grpc.ConsentServiceStub(self._channel)
        self.rights = subject_rights_service_pb2_grpc.SubjectRightsServiceStub(self._channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self.identities = identity_service_pb2_grpc.IdentityServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> "ConsentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method, request, *, retry: bool = True):
        attempts = self.retry.max_attempts if retry else 1
        for attempt in itertools.count(1):
            try:
                return method(request, metadata=self._metadata, timeout=self.timeout)
            except grpc.RpcError as e:
                error = errors.from_rpc_error(e)
                if not isinstance(error, errors.Unavailable) or attempt >= attempts:
                    raise error from None
                time.sleep(self.retry.delay(attempt, error))
        raise AssertionError("unreachable")

    # --- checks -------------------------------------------------------------------------

    def check(
        self,
        subject: Subject,
        purpose_id: str,
        vendor_id: str = "",
        *,
        at_least_revision: Optional[int] = None,
    ) -> Any:
        """The decision (consent.v1.CheckResponse) for one purpose of one subject (an id, or
        an identity: consent_client.identity) now."""
        request = cs.CheckRequest(**_subject(subject), purpose_id=purpose_id, vendor_id=vendor_id)
        if at_least_revision is not None:
            request.consistency.at_least_revision = at_least_revision
        return self._call(self.consent.Check, request)

    def allowed(self, subject: Subject, purpose_id: str) -> bool:
        """True only when the service allows it; an error raises, never allows."""
        return self.check(subject, purpose_id).allowed

    def check_batch(self, checks: Sequence[tuple[Subject, str]] | Sequence[tuple[Subject, str, str]]) -> list:
        """Up to 10,000 checks of (subject, purpose_id[, vendor_id]), a subject being an id
        or an identity; results in order."""
        request = cs.CheckBatchRequest(
            checks=[
                cs.CheckRequest(**_subject(c[0]), purpose_id=c[1], vendor_id=c[2] if len(c) > 2 else "")
                for c in checks
            ]
        )
        return list(self._call(self.consent.CheckBatch, request).results)

    # --- writes -------------------------------------------------------------------------

    def record_consent(
        self,
        subject: Subject,
        decisions: dict[str, int],
        *,
        channel: int = types_pb2.CHANNEL_API,
        evidence: Optional[dict] = None,
        idempotency_key: str = "",
    ) -> Any:
        """Records decisions ({purpose_id: DECISION_GRANTED | DENIED | WITHDRAWN}) of one
        subject (an id or an identity). Retried safely: an idempotency key is made when none
        is given."""
        request = cs.RecordConsentRequest(
            **_subject(subject),
            decisions=[cs.PurposeDecision(purpose_id=p, decision=d) for p, d in decisions.items()],
            channel=channel,
            evidence=types_pb2.Evidence(**(evidence or {})),
            idempotency_key=idempotency_key or f"py-{uuid.uuid4()}",
        )
        return self._call(self.consent.RecordConsent, request)

    def withdraw_consent(
        self,
        subject: Subject,
        purpose_ids: Sequence[str] = (),
        *,
        channel: int = types_pb2.CHANNEL_API,
        idempotency_key: str = "",
    ) -> Any:
        """Withdraws these purposes, or (none named) everything, of one subject (an id or an
        identity). Retried safely."""
        request = cs.WithdrawConsentRequest(
            **_subject(subject),
            purpose_ids=list(purpose_ids),
            channel=channel,
            idempotency_key=idempotency_key or f"py-{uuid.uuid4()}",
        )
        return self._call(self.consent.WithdrawConsent, request)

    # --- identities ---------------------------------------------------------------------

    def link_identity(
        self,
        subject_id: str,
        identity: Any,
        *,
        evidence: Optional[dict] = None,
        merge: bool = False,
        carry_choices: bool = False,
    ) -> Any:
        """Links an identity (consent_client.identity) to a subject: a ledger record; a retry
        answers already_linked, so it is retried. Raises FailedPrecondition when the identity
        is linked to another subject, unless merge=True: that subject is then merged into this
        one (the later choice wins per purpose, a tie goes to the refusal, rights of either
        side stand; the other subject is closed). carry_choices=True carries the choices an
        unlinked identity recorded under its own subject over to this one. The answer's
        merged_subject_id names the subject merged, if one was."""
        request = ids.LinkIdentityRequest(
            subject_id=subject_id,
            identity=identity,
            evidence=types_pb2.Evidence(**(evidence or {})),
            merge=merge,
            carry_choices=carry_choices,
        )
        return self._call(self.identities.LinkIdentity, request)

    def unlink_identity(self, subject_id: str, identity: Any) -> Any:
        """Unlinks an identity from a subject. Not retried: a repeat of an applied unlink
        raises NotFound."""
        request = ids.UnlinkIdentityRequest(subject_id=subject_id, identity=identity)
        return self._call(self.identities.UnlinkIdentity, request, retry=False)

    def resolve_identity(self, identity: Any) -> Any:
        """The subject an identity stands for (consent.v1.ResolveIdentityResponse)."""
        return self._call(self.identities.ResolveIdentity, ids.ResolveIdentityRequest(identity=identity))

    def list_identities(self, subject_id: str) -> list:
        """The identities linked to a subject, in link order."""
        request = ids.ListIdentitiesRequest(subject_id=subject_id)
        return list(self._call(self.identities.ListIdentities, request).identities)

    # --- pipelines ----------------------------------------------------------------------

    def judge(
        self,
        subject_ids: Iterable[str],
        purpose_id: str,
        *,
        vendor_id: str = "",
        batch: int = 1000,
        in_flight: int = 4,
    ) -> Iterator[tuple[str, bool]]:
        """(subject_id, allowed) for each input id, in input order, through one CheckStream:
        `batch` ids per request and at most `in_flight` requests unanswered, so memory is
        bounded whatever the input's length. An error raises (the ids after it are not
        judged)."""
        ids = iter(subject_ids)
        places = threading.Semaphore(max(1, in_flight))
        pending: collections.deque = collections.deque()
        lock = threading.Lock()
        stop = threading.Event()

        def requests() -> Iterator[Any]:
            for n in itertools.count(1):
                places.acquire()
                if stop.is_set():
                    return
                chunk = list(itertools.islice(ids, max(1, min(batch, 10_000))))
                if not chunk:
                    return
                for s in chunk:
                    if not isinstance(s, str):
                        raise TypeError(f"subject ids must be str, got {type(s).__name__}: {s!r}")
                with lock:
                    pending.append((str(n), chunk))
                yield cs.CheckStreamRequest(
                    correlation_id=str(n),
                    checks=[cs.CheckRequest(subject_id=s, purpose_id=purpose_id, vendor_id=vendor_id) for s in chunk],
                )

        answers = self.consent.CheckStream(requests(), metadata=self._metadata)
        try:
            for answer in answers:
                with lock:
                    correlation, chunk = pending.popleft()
                if answer.correlation_id != correlation:
                    raise errors.ConsentError(f"answer {answer.correlation_id!r} came for request {correlation}")
                if answer.HasField("error"):
                    raise errors.from_stream_error(answer.error)
                if len(answer.results) != len(chunk):
                    raise errors.ConsentError(f"{len(answer.results)} results for {len(chunk)} checks")
                for subject, result in zip(chunk, answer.results):
                    yield subject, result.allowed
                places.release()
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        finally:
            stop.set()
            places.release()
            answers.cancel()

    def filter_allowed(self, subject_ids: Any, purpose_id: str, **options: Any) -> Any:
        """The ids of `subject_ids` for which `purpose_id` may be processed now, in input
        order (an iterator), through one CheckStream with bounded memory. Given a pandas
        Series or a pyarrow Array, returns a boolean mask of the same length instead (a
        Series with the same index, or a pyarrow BooleanArray); nulls are refused."""
        kind = _columnar_kind(subject_ids)
        if kind is None:
            return (s for s, allowed in self.judge(subject_ids, purpose_id, **options) if allowed)
        if kind == "pandas":
            if subject_ids.isna().any():
                raise ValueError("subject_ids holds nulls: every row needs an id")
            flags = [a for _, a in self.judge((str(s) for s in subject_ids), purpose_id, **options)]
            import pandas

            return pandas.Series(flags, index=subject_ids.index, dtype=bool)
        import pyarrow

        if subject_ids.null_count:
            raise ValueError("subject_ids holds nulls: every row needs an id")
        flags = [a for _, a in self.judge((str(s) for s in subject_ids.to_pylist()), purpose_id, **options)]
        return pyarrow.array(flags, type=pyarrow.bool_())

    def _open_snapshot(self, request):
        stream = self.consent.ExportSnapshot(request, metadata=self._metadata)
        try:
            first = next(stream)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        except StopIteration:
            raise errors.Unavailable("the snapshot ended before its header") from None
        if first.WhichOneof("part") != "header":
            raise errors.ConsentError("a snapshot began without its header")
        return stream, first.header

    def snapshot(self, purpose_ids: Sequence[str] = (), *, vendor_id: str = "", at_revision: int = 0) -> Snapshot:
        """Every subject's decisions for `purpose_ids` (empty: every catalogued purpose) at one
        revision (0: the head). Watch from `snapshot.revision` to follow the changes."""
        request = cs.ExportSnapshotRequest(purpose_ids=list(purpose_ids), vendor_id=vendor_id, at_revision=at_revision)
        for attempt in itertools.count(1):
            try:
                return Snapshot(self, request)
            except errors.Unavailable as e:
                if attempt >= self.retry.max_attempts:
                    raise
                time.sleep(self.retry.delay(attempt, e))
        raise AssertionError("unreachable")

    def watch(self, from_revision: int = 0, *, purpose_ids: Sequence[str] = (), subject_id: str = "") -> Iterator[Any]:
        """The change feed (consent.v1.WatchResponse messages, heartbeats included) from
        `from_revision`, resumed from the last revision received when the stream ends or the
        service is unavailable (after `retry.max_attempts` failures in a row it raises)."""
        cursor = from_revision
        failures = 0
        while True:
            request = cs.WatchRequest(from_revision=cursor, purpose_ids=list(purpose_ids), subject_id=subject_id)
            try:
                for message in self.consent.Watch(request, metadata=self._metadata):
                    failures = 0
                    cursor = max(cursor, message.revision)
                    yield message
                error: errors.ConsentError = errors.Unavailable("the watch stream ended")
            except grpc.RpcError as e:
                error = errors.from_rpc_error(e)
            failures += 1
            resumable = isinstance(error, (errors.Unavailable, errors.DeadlineExceeded))
            if not resumable or failures >= self.retry.max_attempts:
                raise error
            time.sleep(self.retry.delay(failures, error))


def _columnar_kind(values: Any) -> Optional[str]:
    """"pandas" for a pandas Series, "arrow" for a pyarrow Array, else None."""
    module = type(values).__module__
    if module.startswith("pandas") and hasattr(values, "index"):
        return "pandas"
    if module.startswith("pyarrow") and hasattr(values, "to_pylist"):
        return "arrow"
    return None
