"""The auth service: every rule about tokens, sessions, enrollment and audit.

Faces (API routes, console, CLI) call these methods; nothing here knows HTTP.
Secrets (tokens, enrollment tokens, session keys) are generated here with
``secrets`` and stored only as hashes or as server secrets in the backend.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from conveyor.config import Settings
from conveyor.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated

from . import enrollment, task_credentials
from .models import AuditEvent, AuditPage, TokenRecord, hash_token, new_token, token_id_of
from .roles import Permission, Role, allows
from .store import AuthStore

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# a task id (a ULID) names a task's folder in the output bucket; a token named like one
# would own that folder (a submitter's files live under "<token name>/")
_TASK_ID_RE = re.compile(r"^[0-9A-Za-z]{26}$")
# a secret is looked up as CONVEYOR_SECRET_<NAME> on the worker (processors.container)
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_SECRETS = 64
ENROLL_KEY = "enrollment_hmac_key"
SESSION_KEY = "session_hmac_key"
TASK_KEY = "task_credential_hmac_key"
# how long "this worker still has a live credential" is believed, for task credentials
WORKER_LIVE_CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id, name and role (or the open-mode stand-in)."""

    token_id: str
    name: str
    role: Role
    worker_id: str | None = None
    secrets: frozenset[str] = frozenset()  # worker secrets granted to this token
    # a task credential (conveyor.auth.task_credentials): it speaks for this one task
    # and attempt only, run for ``worker_id``; None for every other credential
    task_id: str | None = None
    attempt: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.role.value})"

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    def may_use_secret(self, name: str) -> bool:
        """The admin may ask for any secret; everyone else for those granted by name."""
        return self.role is Role.ADMIN or name in self.secrets

    @classmethod
    def of(cls, record: TokenRecord) -> Principal:
        return cls(record.id, record.name, record.role, record.worker_id, frozenset(record.secrets))


# bandit B106: "-" is a placeholder id, not a password
OPEN_PRINCIPAL = Principal(token_id="-", name="anonymous", role=Role.ADMIN)  # nosec B106


@dataclass(frozen=True)
class IssuedToken:
    record: TokenRecord
    token: str


@dataclass(frozen=True)
class WorkerCredential:
    worker_id: str
    credential: str
    expires_at: datetime


@dataclass(frozen=True)
class TaskCredential:
    task_id: str
    attempt: int
    worker_id: str
    credential: str
    expires_at: datetime


@dataclass(frozen=True)
class Session:
    token_id: str
    csrf: str
    expires_at: float
    id: str = ""  # revoked on logout (AuthStore.revoke_session)


def check_name(name: str, what: str = "name") -> str:
    name = name.strip()
    if not _NAME_RE.match(name):
        raise InvalidRequest(
            f"invalid {what} {name[:80]!r}: 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return name


def check_secret_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        name = name.strip()
        if not SECRET_NAME_RE.match(name):
            raise InvalidRequest(
                f"invalid secret name {name[:80]!r}: letters, digits and _ (the worker reads "
                "CONVEYOR_SECRET_<NAME>)"
            )
        if name not in out:
            out.append(name)
    if len(out) > MAX_SECRETS:
        raise InvalidRequest(f"at most {MAX_SECRETS} secrets per token")
    return out


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuthService:
    def __init__(self, settings: Settings, store: AuthStore) -> None:
        self.settings = settings
        self.store = store
        self._keys: dict[str, bytes] = {}
        self._worker_live: dict[str, tuple[float, bool]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.settings.auth)

    # -- API tokens ------------------------------------------------------------------
    def create_token(
        self,
        name: str,
        role: Role | str,
        *,
        expires_in: float | None = None,
        created_by: str | None = None,
        worker_id: str | None = None,
        secrets: list[str] | None = None,
    ) -> IssuedToken:
        name = check_name(name)
        try:
            role = Role(role)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidRequest(f"unknown role {role!r}; use one of {known}") from None
        if _TASK_ID_RE.match(name) and role is not Role.WORKER:
            raise InvalidRequest(
                f"invalid name {name!r}: 26 letters and digits look like a task id, and a task "
                "id names that task's folder in the output bucket"
            )
        granted = check_secret_names(secrets or [])
        if granted and not allows(role, Permission.TASKS_RUN_CODE):
            raise InvalidRequest(
                f"role {role.value!r} cannot use secrets: only tasks that run code ask for them "
                f"(roles with {Permission.TASKS_RUN_CODE.value})"
            )
        if expires_in is not None and expires_in <= 0:
            raise InvalidRequest("expiry must be in the future")
        tid, token = new_token()
        now = datetime.now(UTC)
        record = TokenRecord(
            id=tid,
            name=name,
            role=role,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
            created_by=created_by,
            worker_id=worker_id,
            secrets=granted,
        )
        self.store.put_token(record)
        log.info("Token created: %s %s (%s)", tid, name, role.value)
        return IssuedToken(record, token)

    def authenticate(self, token: str) -> Principal:
        if task_credentials.is_task_credential(token):
            return self._authenticate_task(token)
        tid = token_id_of(token.strip())
        record = self.store.get_token(tid) if tid else None
        # compare even when the id is unknown, so timing does not tell ids apart
        want = record.token_hash if record else "0" * 64
        if not hmac.compare_digest(hash_token(token.strip()), want) or record is None:
            raise Unauthenticated("invalid token")
        if record.revoked_at is not None:
            raise Unauthenticated("token has been revoked")
        if not record.active():
            raise Unauthenticated("token has expired")
        return Principal.of(record)

    def principal_of(self, token_id: str) -> Principal:
        record = self.store.get_token(token_id)
        if record is None or not record.active():
            raise Unauthenticated("session ended: the token was revoked or has expired")
        return Principal.of(record)

    def list_tokens(self) -> list[TokenRecord]:
        return self.store.list_tokens()

    def revoke_token(self, token_id: str) -> TokenRecord:
        record = self.store.revoke_token(token_id.strip(), datetime.now(UTC))
        if record is None:
            raise NotFound(f"token {token_id!r} not found")
        log.info("Token revoked: %s %s", record.id, record.name)
        return record

    def bootstrap_admin(self) -> IssuedToken | None:
        """With auth on and no usable admin token, make one to be shown once."""
        if not self.enabled:
            return None
        if any(r.role is Role.ADMIN and r.active() for r in self.store.list_tokens()):
            return None
        return self.create_token("admin", Role.ADMIN, created_by="bootstrap")

    # -- console sessions ------------------------------------------------------------
    def _key(self, name: str) -> bytes:
        """A server secret: made once in the store, then kept in memory (it never changes)."""
        key = self._keys.get(name)
        if key is None:
            key = _unb64(self.store.secret(name, lambda: _b64(secrets.token_bytes(32))))
            self._keys[name] = key
        return key

    def new_session(self, principal: Principal) -> tuple[str, Session]:
        record = self.store.get_token(principal.token_id)
        exp = time.time() + self.settings.session_ttl
        if record is not None and record.expires_at is not None:
            exp = min(exp, record.expires_at.timestamp())
        session = Session(
            principal.token_id, secrets.token_urlsafe(24), exp, secrets.token_urlsafe(18)
        )
        claims = {"t": session.token_id, "c": session.csrf, "e": int(exp), "s": session.id}
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(self._key(SESSION_KEY), body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}", session

    def read_session(self, cookie: str) -> Session:
        """A signed, unexpired cookie of a session that was not logged out."""
        try:
            body, mac = cookie.split(".", 1)
            want = hmac.new(self._key(SESSION_KEY), body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_unb64(mac), want):
                raise ValueError("signature")
            data = json.loads(_unb64(body))
            session = Session(str(data["t"]), str(data["c"]), float(data["e"]), str(data["s"]))
        except (ValueError, KeyError, TypeError):
            # a cookie made before sessions had ids cannot be logged out: refused too
            raise Unauthenticated("invalid session: log in again") from None
        if session.expires_at <= time.time():
            raise Unauthenticated("session expired: log in again")
        if self.store.session_revoked(session.id):
            raise Unauthenticated("session ended: you logged out; log in again")
        return session

    def end_session(self, session: Session) -> None:
        """Logout: the session is refused from now on, on every API process, until it
        would have expired anyway (then the record is dropped)."""
        self.store.revoke_session(session.id, datetime.fromtimestamp(session.expires_at, UTC))
        log.info("Session ended (logout) for token %s", session.token_id)

    # -- worker enrollment -----------------------------------------------------------
    def create_enrollment_token(
        self, *, name: str | None = None, pool: str | None = None, ttl: float | None = None
    ) -> tuple[str, datetime]:
        ttl = self.settings.enrollment_ttl if ttl is None else ttl
        if not 1 <= ttl <= 7 * 86400:
            raise InvalidRequest("enrollment token lifetime must be between 1 s and 7 days")
        now = int(time.time())
        claims = enrollment.EnrollmentClaims(
            nonce=enrollment.new_nonce(),
            issued_at=now,
            expires_at=now + round(ttl),
            name=check_name(name, "worker name") if name else None,
            pool=check_name(pool, "pool") if pool else None,
        )
        token = enrollment.sign(self._key(ENROLL_KEY), claims)
        return token, datetime.fromtimestamp(claims.expires_at, UTC)

    def enroll(self, token: str, name: str) -> WorkerCredential:
        """Exchange a one-time enrollment token for a worker credential.

        Raises ``Unauthenticated`` (forged, expired, malformed, already used) or
        ``Forbidden`` (scoped to another name); the caller audits either way.
        """
        name = check_name(name, "worker name")
        try:
            claims = enrollment.verify(self._key(ENROLL_KEY), token, time.time())
        except enrollment.EnrollmentTokenError as exc:
            raise Unauthenticated(exc.message) from None
        if claims.name and claims.name != name:
            raise Forbidden(f"this enrollment token is for worker {claims.name!r}, not {name!r}")
        exp = datetime.fromtimestamp(claims.expires_at, UTC)
        if not self.store.use_nonce(claims.nonce, exp):
            raise Unauthenticated("enrollment token was already used: it is valid once")
        return self._issue_worker(name, created_by=f"enroll:{claims.nonce[:8]}")

    def _issue_worker(self, worker_id: str, created_by: str) -> WorkerCredential:
        issued = self.create_token(
            worker_id,
            Role.WORKER,
            expires_in=self.settings.worker_credential_ttl,
            created_by=created_by,
            worker_id=worker_id,
        )
        assert issued.record.expires_at is not None
        return WorkerCredential(worker_id, issued.token, issued.record.expires_at)

    def rotate(self, principal: Principal) -> WorkerCredential:
        if principal.task_id is not None:
            raise Forbidden("a task credential cannot be rotated: it lives as long as its attempt")
        if principal.role is not Role.WORKER or not principal.worker_id:
            raise Forbidden("only a worker credential can be rotated")
        cred = self._issue_worker(principal.worker_id, created_by=f"rotate:{principal.token_id}")
        self.store.revoke_token(principal.token_id, datetime.now(UTC))
        return cred

    # -- task credentials ----------------------------------------------------------
    def issue_task_credential(
        self, worker_id: str, task_id: str, attempt: int, ttl_s: float
    ) -> TaskCredential:
        """A credential that speaks for ``task_id``'s ``attempt`` only, run for ``worker_id``
        (conveyor.auth.task_credentials).  The caller checked that the worker holds it."""
        ttl = min(max(ttl_s, 60.0), task_credentials.MAX_TTL_S)
        now = int(time.time())
        scope = task_credentials.TaskScope(
            task_id=task_id,
            attempt=attempt,
            worker_id=worker_id,
            issued_at=now,
            expires_at=now + round(ttl),
        )
        token = task_credentials.sign(self._key(TASK_KEY), scope)
        exp = datetime.fromtimestamp(scope.expires_at, UTC)
        return TaskCredential(task_id, attempt, worker_id, token, exp)

    def _authenticate_task(self, token: str) -> Principal:
        try:
            scope = task_credentials.verify(self._key(TASK_KEY), token, time.time())
        except task_credentials.TaskCredentialError as exc:
            raise Unauthenticated(exc.message) from None
        if not self._worker_has_live_credential(scope.worker_id):
            raise Unauthenticated(
                f"task credential refused: worker {scope.worker_id!r}, which it was issued "
                "to, has no live credential (revoked or expired)"
            )
        return Principal(
            token_id=f"task:{scope.task_id}.{scope.attempt}",
            name=scope.worker_id,
            role=Role.WORKER,
            worker_id=scope.worker_id,
            task_id=scope.task_id,
            attempt=scope.attempt,
        )

    def _worker_has_live_credential(self, worker_id: str) -> bool:
        """A task credential lives only while its worker does: revoking the worker
        (``revoke_worker``) refuses its jobs' credentials too, within seconds."""
        now = time.monotonic()
        cached = self._worker_live.get(worker_id)
        if cached is not None and now - cached[0] < WORKER_LIVE_CACHE_S:
            return cached[1]
        live = any(
            r.role is Role.WORKER and (r.worker_id or r.name) == worker_id and r.active()
            for r in self.store.list_tokens()
        )
        if len(self._worker_live) > 10_000:
            self._worker_live.clear()
        self._worker_live[worker_id] = (now, live)
        return live

    def revoke_worker(self, worker_id: str) -> int:
        self._worker_live.pop(worker_id, None)
        n = self.store.revoke_worker(worker_id, datetime.now(UTC))
        if n == 0:
            raise NotFound(f"worker {worker_id!r} has no live credential")
        log.info("Worker credential revoked: %s (%d)", worker_id, n)
        return n

    # -- audit ----------------------------------------------------------------------
    def audit(
        self,
        principal: Principal | None,
        action: str,
        *,
        target: str | None = None,
        ip: str | None = None,
        ok: bool = True,
        detail: str | None = None,
    ) -> None:
        who = principal or Principal("-", "unknown", Role.VIEWER)
        event = AuditEvent(
            actor=who.name,
            role=who.role.value if principal else "-",
            action=action,
            target=target,
            ip=ip,
            ok=ok,
            detail=detail[:500] if detail else None,
        )
        try:
            self.store.add_audit(event)
        except Exception:  # an audit write must not turn a done action into an error
            log.exception("audit write failed: %s %s", action, target)

    def list_audit(self, limit: int = 50, cursor: str | None = None) -> AuditPage:
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be between 1 and 1000")
        return self.store.list_audit(limit, cursor)
