"""The auth store (tokens, secrets, nonces, audit) on every backend engine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.auth.models import AuditEvent, TokenRecord, hash_token, new_token
from conveyor.auth.roles import Role
from conveyor.auth.store import AuthStore
from conveyor.backends.base import Backend

from .conftest import BACKEND_ENGINES, BackendOpener


@pytest.fixture(params=sorted(set(BACKEND_ENGINES) - {"remote"}))
def backend_engine(request: pytest.FixtureRequest) -> str:
    """The engines that keep an auth store: a remote worker's https:// engine has none
    (tokens live with the API it talks to)."""
    name: str = request.param
    return name


def _record(name: str, role: Role = Role.VIEWER, worker_id: str | None = None) -> TokenRecord:
    tid, token = new_token()
    return TokenRecord(
        id=tid, name=name, role=role, token_hash=hash_token(token), worker_id=worker_id
    )


def test_tokens_put_get_list_revoke(backend: Backend) -> None:
    store = backend.auth_store()
    a, b = _record("alice", Role.ADMIN), _record("bob", Role.SUBMITTER)
    b.expires_at = datetime.now(UTC) + timedelta(days=30)
    store.put_token(a)
    store.put_token(b)
    got = store.get_token(b.id)
    assert got is not None
    assert (got.name, got.role, got.token_hash) == ("bob", Role.SUBMITTER, b.token_hash)
    assert got.expires_at is not None
    assert abs((got.expires_at - b.expires_at).total_seconds()) < 0.01
    assert store.get_token("nope") is None
    assert {r.id for r in store.list_tokens()} == {a.id, b.id}

    first = datetime.now(UTC).replace(microsecond=0)
    revoked = store.revoke_token(a.id, first)
    assert revoked is not None and revoked.revoked_at == first
    again = store.revoke_token(a.id, first + timedelta(seconds=5))
    assert again is not None and again.revoked_at == first  # the first revoke stands
    assert not again.active()
    assert store.revoke_token("nope", first) is None


def test_revoke_worker_revokes_only_its_live_credentials(backend: Backend) -> None:
    store = backend.auth_store()
    w1, w1b, w2 = (
        _record("gpu1", Role.WORKER, "gpu1"),
        _record("gpu1", Role.WORKER, "gpu1"),
        _record("gpu2", Role.WORKER, "gpu2"),
    )
    for r in (w1, w1b, w2):
        store.put_token(r)
    now = datetime.now(UTC).replace(microsecond=0)
    assert store.revoke_worker("gpu1", now) == 2
    assert store.revoke_worker("gpu1", now) == 0
    rec = store.get_token(w2.id)
    assert rec is not None and rec.active()


# The racing calls run at once on every engine: on aws the moto server the tests start
# serialises DynamoDB's writes as the real service does (tests/moto_atomic.py).
def _run(calls: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_secret_is_created_once_even_when_raced(
    open_backend: BackendOpener, backend_engine: str
) -> None:
    handles = [open_backend(), open_backend()]
    values: list[str] = []

    def grab(i: int) -> Callable[[], None]:
        return lambda: values.append(handles[i % 2].auth_store().secret("k", lambda: f"value-{i}"))

    _run([grab(i) for i in range(6)])
    assert len(set(values)) == 1, values
    assert handles[0].auth_store().secret("k", lambda: "other") == values[0]


def test_nonce_is_single_use_across_handles(
    open_backend: BackendOpener, backend_engine: str
) -> None:
    a, b = open_backend().auth_store(), open_backend().auth_store()
    exp = datetime.now(UTC) + timedelta(minutes=5)
    results: list[bool] = []

    def use(store: AuthStore) -> Callable[[], None]:
        return lambda: results.append(store.use_nonce("n-1", exp))

    _run([use(s) for s in (a, b, a, b)])
    assert sorted(results) == [False, False, False, True]
    assert b.use_nonce("n-2", exp) is True


def test_audit_pages_newest_first(backend: Backend) -> None:
    store = backend.auth_store()
    for i in range(7):
        store.add_audit(AuditEvent(actor=f"u{i}", role="admin", action="submit", target=f"t{i}"))
    page = store.list_audit(limit=3)
    assert [e.actor for e in page.events] == ["u6", "u5", "u4"]
    assert page.next_cursor
    page2 = store.list_audit(limit=3, cursor=page.next_cursor)
    assert [e.actor for e in page2.events] == ["u3", "u2", "u1"]
    page3 = store.list_audit(limit=3, cursor=page2.next_cursor)
    assert [e.actor for e in page3.events] == ["u0"]
    assert page3.next_cursor is None
    e = page.events[0]
    assert (e.role, e.action, e.target, e.ok) == ("admin", "submit", "t6", True)


def test_a_token_keeps_the_secrets_granted_to_it(backend: Backend) -> None:
    store = backend.auth_store()
    dev = _record("trainer", Role.DEVELOPER)
    dev.secrets = ["WANDB_API_KEY", "HF_TOKEN"]
    plain = _record("ci", Role.SUBMITTER)
    store.put_token(dev)
    store.put_token(plain)
    got = store.get_token(dev.id)
    assert got is not None
    assert (got.role, got.secrets) == (Role.DEVELOPER, ["WANDB_API_KEY", "HF_TOKEN"])
    other = store.get_token(plain.id)
    assert other is not None and other.secrets == []
    listed = {r.id: r.secrets for r in store.list_tokens()}
    assert listed == {dev.id: ["WANDB_API_KEY", "HF_TOKEN"], plain.id: []}
    revoked = store.revoke_token(dev.id, datetime.now(UTC))
    assert revoked is not None and revoked.secrets == ["WANDB_API_KEY", "HF_TOKEN"]


def test_a_logged_out_session_stays_revoked_across_handles(open_backend: BackendOpener) -> None:
    a, b = open_backend().auth_store(), open_backend().auth_store()
    soon = datetime.now(UTC) + timedelta(hours=1)
    assert a.session_revoked("s-1") is False
    a.revoke_session("s-1", soon)
    a.revoke_session("s-1", soon)  # a second logout of the same session is harmless
    assert b.session_revoked("s-1") is True
    assert b.session_revoked("s-2") is False
    # a record past its session's expiry may be dropped (its cookie is refused anyway)
    b.revoke_session("s-old", datetime.now(UTC) - timedelta(hours=1))
    b.revoke_session("s-2", soon)
    assert a.session_revoked("s-2") is True and a.session_revoked("s-1") is True
