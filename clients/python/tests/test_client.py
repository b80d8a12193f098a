"""consent_client against a real consentd: checks and writes, typed exceptions from the rich
status details, filter_allowed over 100,000 subjects equal to per-subject checks (and as a
pandas / pyarrow mask when those are installed), snapshot + watch reaching the state checks
see."""

from __future__ import annotations

import uuid

import pytest

from consent_client import (
    ConsentClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    types,
)


@pytest.fixture
def client(server):
    with ConsentClient(server.address, api_key=server.writer_key, timeout=30) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_record_check_withdraw(client):
    subject = unique("+3247")
    written = client.record_consent(
        subject,
        {"call_recording": types.DECISION_GRANTED, "marketing_communications": types.DECISION_DENIED},
        channel=types.CHANNEL_VOICE,
        evidence={"call_id": "call-42"},
    )
    assert len(written.events) == 2
    answer = client.check(subject, "call_recording", at_least_revision=written.revision)
    assert answer.allowed and answer.reason == types.REASON_GRANTED
    assert not client.allowed(subject, "marketing_communications")
    results = client.check_batch([(subject, "call_recording"), (subject, "analytics")])
    assert [r.allowed for r in results] == [True, False]
    withdrawn = client.withdraw_consent(subject, ["call_recording"])
    assert not client.check(subject, "call_recording", at_least_revision=withdrawn.revision).allowed


def test_a_given_idempotency_key_applies_a_write_once(client):
    subject = unique("idem")
    first = client.record_consent(subject, {"analytics": types.DECISION_GRANTED}, idempotency_key=subject)
    again = client.record_consent(subject, {"analytics": types.DECISION_GRANTED}, idempotency_key=subject)
    assert [e.id for e in again.events] == [e.id for e in first.events]


def test_errors_are_typed_from_the_rich_details(client, server):
    with pytest.raises(InvalidArgument) as bad:
        client.check("", "analytics")
    assert [v.field for v in bad.value.violations] == ["subject_id"]
    with pytest.raises(NotFound) as missing:
        client.check("s", "no_such_purpose")
    assert (missing.value.kind, missing.value.id) == ("purpose", "no_such_purpose")
    with ConsentClient(server.address, api_key=server.reader_key) as reader:
        with pytest.raises(PermissionDenied):
            reader.record_consent("s", {"analytics": types.DECISION_GRANTED})
    with ConsentClient(server.address, api_key="ck_0000000000000000_" + "0" * 64) as stranger:
        with pytest.raises(Unauthenticated):
            stranger.check("s", "analytics")
    with ConsentClient(server.address) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.check("s", "analytics")
    erased = unique("erased")
    client.record_consent(erased, {"analytics": types.DECISION_GRANTED})
    from consent_client._pb.consent.v1 import subject_rights_service_pb2 as rights

    client.rights.EraseSubject(rights.EraseSubjectRequest(subject_id=erased, reason="request"), metadata=client._metadata)
    with pytest.raises(FailedPrecondition):
        client.record_consent(erased, {"analytics": types.DECISION_GRANTED})


def seed(client, prefix: str, count: int, every: int) -> tuple[list[str], list[str]]:
    """`count` ids; every `every`-th one granted analytics. Returns (all ids, granted ids)."""
    ids = [f"{prefix}{i:06d}" for i in range(count)]
    granted = ids[::every]
    for subject in granted:
        client.record_consent(subject, {"analytics": types.DECISION_GRANTED})
    return ids, granted


def test_filter_allowed_over_100_000_subjects_matches_checks(client):
    ids, granted = seed(client, unique("f") + "-", 100_000, 100)
    client.withdraw_consent(granted[1], ["analytics"])
    expected = [s for s in granted if s != granted[1]]
    allowed = list(client.filter_allowed(iter(ids), "analytics"))
    assert allowed == expected
    # CheckBatch agrees on every subject.
    judged = []
    for start in range(0, len(ids), 10_000):
        batch = ids[start : start + 10_000]
        judged.extend(s for s, r in zip(batch, client.check_batch([(s, "analytics") for s in batch])) if r.allowed)
    assert judged == expected


def test_filter_allowed_stops_on_a_bad_id(client):
    with pytest.raises(InvalidArgument) as bad:
        list(client.filter_allowed(["ok-1", "bad\u200bid", "ok-2"], "analytics", batch=2))
    assert bad.value.violations and bad.value.violations[0].field.endswith("subject_id")


def test_filter_allowed_gives_a_pandas_mask(client):
    pandas = pytest.importorskip("pandas")
    ids, granted = seed(client, unique("pd") + "-", 500, 7)
    series = pandas.Series(ids, index=range(1000, 1500))
    mask = client.filter_allowed(series, "analytics")
    assert list(mask.index) == list(series.index)
    assert list(series[mask]) == granted
    with pytest.raises(ValueError):
        client.filter_allowed(pandas.Series(["a", None]), "analytics")


def test_filter_allowed_gives_an_arrow_mask(client):
    pyarrow = pytest.importorskip("pyarrow")
    ids, granted = seed(client, unique("pa") + "-", 300, 5)
    mask = client.filter_allowed(pyarrow.array(ids), "analytics")
    assert mask.type == pyarrow.bool_() and len(mask) == len(ids)
    assert [s for s, m in zip(ids, mask.to_pylist()) if m] == granted


def test_snapshot_then_watch_reach_the_state_checks_see(client):
    prefix = unique("snap") + "-"
    ids, granted = seed(client, prefix, 1500, 1)
    snapshot = client.snapshot(["analytics"])
    # Written after the snapshot's revision: not in it, in the feed.
    changed = client.withdraw_consent(ids[3], ["analytics"])
    late = client.record_consent(prefix + "late", {"analytics": types.DECISION_GRANTED})
    state = {}
    for subject in snapshot:
        if subject.subject_id.startswith(prefix):
            state[subject.subject_id] = subject.decisions[0].allowed
    assert set(state) == set(ids) and all(state.values())
    for message in client.watch(snapshot.revision, purpose_ids=["analytics"]):
        for event in message.events:
            if event.subject_id.startswith(prefix):
                state[event.subject_id] = event.decision == types.DECISION_GRANTED
        if message.revision >= late.revision:
            break
    assert changed.revision > snapshot.revision
    assert not state[ids[3]] and state[prefix + "late"]
    for subject, allowed in state.items():
        assert client.allowed(subject, "analytics") == allowed, subject


def test_a_person_is_checked_by_any_of_their_identities(client):
    from consent_client import identity

    account = unique("acct")
    number = f"+32 470 {uuid.uuid4().int % 1000000:06d}"
    linked = client.link_identity(account, identity.phone(number), evidence={"call_id": "call-43"})
    assert linked.identity.subject_id == account and linked.identity.value == ""
    assert client.link_identity(account, identity.phone(number.replace("+", "00"))).already_linked
    client.link_identity(account, identity.cookie(f"ck-{account}"))
    written = client.record_consent(
        identity.phone(number), {"call_recording": types.DECISION_GRANTED}, channel=types.CHANNEL_VOICE
    )
    assert written.events[0].subject_id == account
    assert client.allowed(identity.cookie(f"ck-{account}"), "call_recording")
    answers = client.check_batch([(identity.phone(number), "call_recording"), (account, "analytics")])
    assert [(a.subject_id, a.allowed) for a in answers] == [(account, True), (account, False)]
    assert client.resolve_identity(identity.phone(number)).subject_id == account
    kinds = [i.type for i in client.list_identities(account)]
    assert kinds == [types.IDENTITY_TYPE_PHONE, types.IDENTITY_TYPE_COOKIE]
    with pytest.raises(FailedPrecondition):
        client.link_identity(unique("acct"), identity.phone(number))
    with pytest.raises(InvalidArgument) as bad:
        client.check(identity.phone("0470 12 34 56"), "call_recording")
    assert [v.field for v in bad.value.violations] == ["identity.value"]
    client.withdraw_consent(identity.cookie(f"ck-{account}"), ["call_recording"])
    assert not client.allowed(account, "call_recording")
    client.unlink_identity(account, identity.cookie(f"ck-{account}"))
    with pytest.raises(NotFound):
        client.unlink_identity(account, identity.cookie(f"ck-{account}"))


def test_a_merge_keeps_a_withdrawal_and_closes_the_other_subject(client):
    from consent_client import identity

    account, anonymous = unique("acct"), unique("anon")
    cookie = identity.cookie(f"ck-{anonymous}")
    client.record_consent(account, {"analytics": types.DECISION_GRANTED})
    client.link_identity(anonymous, cookie)
    client.withdraw_consent(cookie, ["analytics"])
    with pytest.raises(FailedPrecondition):
        client.link_identity(account, cookie)
    merged = client.link_identity(account, cookie, merge=True)
    assert merged.merged_subject_id == anonymous and merged.identity.subject_id == account
    assert client.link_identity(account, cookie, merge=True).already_linked
    assert not client.allowed(account, "analytics")
    answer = client.check(anonymous, "analytics")
    assert (answer.allowed, answer.subject_id) == (False, account)
    with pytest.raises(FailedPrecondition) as closed:
        client.record_consent(anonymous, {"analytics": types.DECISION_GRANTED})
    assert account in str(closed.value)
