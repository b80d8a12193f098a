"""Identities: the ids a product knows a person by (consent.v1.Identity), for requests that
name the person by one of them instead of a subject id, and for ConsentClient.link_identity.
The service normalises them (phone numbers to E.164, emails to lower case) and keeps phone
numbers and emails only as keyed hashes.

    from consent_client import identity

    client.link_identity("acct-7781", identity.phone("+32 470 12 34 56"))
    client.allowed(identity.phone("0032470123456"), "call_recording")
"""

from consent_client._pb.consent.v1 import types_pb2 as _types


def _of(kind: int, value: str) -> _types.Identity:
    return _types.Identity(type=kind, value=value)


def account(account_id: str) -> _types.Identity:
    """The product's account id."""
    return _of(_types.IDENTITY_TYPE_ACCOUNT, account_id)


def cookie(cookie_id: str) -> _types.Identity:
    """A browser cookie id."""
    return _of(_types.IDENTITY_TYPE_COOKIE, cookie_id)


def device(device_id: str) -> _types.Identity:
    """A device or app installation id."""
    return _of(_types.IDENTITY_TYPE_DEVICE, device_id)


def phone(number: str) -> _types.Identity:
    """A phone number with its country code, written any usual way."""
    return _of(_types.IDENTITY_TYPE_PHONE, number)


def email(address: str) -> _types.Identity:
    """An email address (compared in lower case)."""
    return _of(_types.IDENTITY_TYPE_EMAIL, address)


def external(external_id: str) -> _types.Identity:
    """Another system's id for the person."""
    return _of(_types.IDENTITY_TYPE_EXTERNAL, external_id)
