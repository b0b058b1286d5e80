"""One-time worker enrollment tokens: HMAC-SHA256 signed, with a nonce and an expiry.

``cve1.<payload>.<signature>``, both parts base64url without padding; the
payload is JSON ``{"n": nonce, "iat", "exp", "name", "pool"}``.  The key is a
server secret kept in the backend (created on first use, never in code), so
every API process of a cluster verifies what any of them signed.  Single use
is the store's ``use_nonce``: the first exchange records the nonce, every
later one with the same nonce is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

PREFIX = "cve1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class EnrollmentClaims:
    nonce: str
    issued_at: int
    expires_at: int
    name: str | None
    pool: str | None


class EnrollmentTokenError(Exception):
    """Why a token is refused; ``reason`` is a stable word for logs and the audit."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def sign(key: bytes, claims: EnrollmentClaims) -> str:
    payload: dict[str, Any] = {
        "n": claims.nonce,
        "iat": claims.issued_at,
        "exp": claims.expires_at,
        "name": claims.name,
        "pool": claims.pool,
    }
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, f"{PREFIX}.{body}".encode(), hashlib.sha256).digest()
    return f"{PREFIX}.{body}.{_b64(mac)}"


def new_nonce() -> str:
    return secrets.token_hex(16)


def verify(key: bytes, token: str, now: float) -> EnrollmentClaims:
    """The claims of a genuine, unexpired token; ``EnrollmentTokenError`` otherwise.

    The signature is checked first (in constant time), so nothing an attacker
    wrote is trusted, not even the expiry it claims.
    """
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX or len(token) > 4096:
        raise EnrollmentTokenError("malformed", "enrollment token is malformed")
    try:
        mac = _unb64(parts[2])
    except ValueError:
        raise EnrollmentTokenError("malformed", "enrollment token is malformed") from None
    want = hmac.new(key, f"{PREFIX}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, want):
        raise EnrollmentTokenError(
            "bad_signature", "enrollment token signature is invalid: forged or altered"
        )
    try:
        data = json.loads(_unb64(parts[1]))
        claims = EnrollmentClaims(
            nonce=str(data["n"]),
            issued_at=int(data["iat"]),
            expires_at=int(data["exp"]),
            name=data.get("name"),
            pool=data.get("pool"),
        )
    except (ValueError, KeyError, TypeError):
        raise EnrollmentTokenError("malformed", "enrollment token is malformed") from None
    if now >= claims.expires_at:
        raise EnrollmentTokenError(
            "expired", "enrollment token has expired: ask an admin for a new one"
        )
    return claims
