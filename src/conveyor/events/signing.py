"""Standard Webhooks signatures (https://www.standardwebhooks.com/), so that the
verifier libraries receivers already have accept Conveyor's deliveries.

A secret is ``whsec_`` + base64 of 32 random bytes; the key is those bytes.  A
delivery carries ``webhook-id`` (the event id: the same on every retry, for
de-duplication), ``webhook-timestamp`` (UNIX seconds of this try: receivers refuse
old ones, which stops replays) and ``webhook-signature``: ``v1,`` + base64 of
HMAC-SHA256(key, ``{id}.{timestamp}.{body}``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from conveyor.errors import InvalidRequest

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise InvalidRequest("a webhook secret is 'whsec_' followed by base64") from None
    if not 24 <= len(key) <= 64:
        raise InvalidRequest("a webhook secret holds 24 to 64 bytes (base64 after 'whsec_')")
    return key


def check_secret(secret: str) -> str:
    """A caller's own secret, refused with a reason when it is not one."""
    _key(secret)
    return secret


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(secret: str, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when one of the space-separated ``v1,`` signatures in ``header`` matches."""
    want = signature(secret, msg_id, timestamp, body)
    return any(hmac.compare_digest(want, s) for s in header.split() if s.startswith("v1,"))
