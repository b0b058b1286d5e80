"""Tokens, worker enrollment and the audit log over HTTP (docs/security.md).

The enrollment exchange is the contract the remote worker's client speaks:
``POST /api/workers/enroll`` ``{"token", "name"}`` → ``{"worker_id",
"credential", "expires_at"}``; ``POST /api/workers/rotate`` with the worker's
credential → the same shape, the old credential revoked.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from conveyor.auth.models import AuditPage
from conveyor.auth.roles import Role
from conveyor.auth.service import WorkerCredential
from conveyor.config import parse_duration
from conveyor.errors import Forbidden, InvalidRequest, Unauthenticated
from conveyor.web.security import (
    Permission,
    Principal,
    audit,
    auth_service,
    owner_filter,
    rate_limit,
    require,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["security"])


def _seconds(value: str | None, what: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidRequest(f"{what}: {exc}") from None


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "ci", "role": "submitter", "expires": "30d"},
                {"name": "trainer", "role": "developer", "secrets": ["WANDB_API_KEY"]},
            ]
        },
    )
    name: str = Field(min_length=1, max_length=64)
    role: Role
    expires: str | None = Field(None, max_length=32, description="e.g. 30d, 12h; none: never")
    secrets: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="worker secrets (CONVEYOR_SECRET_<NAME>) this token's tasks may ask for; "
        "only for roles with tasks:run_code (the admin may ask for any)",
    )


class TokenInfo(BaseModel):
    id: str
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_by: str | None = None
    worker_id: str | None = None
    secrets: list[str] = Field(default_factory=list)
    active: bool


class TokenCreated(TokenInfo):
    token: str = Field(description="shown once: only its hash is stored")


@router.post("/tokens", status_code=201, summary="Create an API token (shown once)")
async def create_token(
    body: TokenCreate, request: Request, principal: Principal = require(Permission.TOKENS_MANAGE)
) -> TokenCreated:
    issued = await run_in_threadpool(
        auth_service(request).create_token,
        body.name,
        body.role,
        expires_in=_seconds(body.expires, "expires"),
        created_by=principal.name,
        secrets=body.secrets,
    )
    granted = f" secrets={','.join(issued.record.secrets)}" if issued.record.secrets else ""
    await audit(request, "token.create", target=issued.record.id, detail=body.role.value + granted)
    return TokenCreated(token=issued.token, **issued.record.public())


@router.get("/tokens", summary="API tokens (never their values)")
async def list_tokens(
    request: Request, _: Principal = require(Permission.TOKENS_MANAGE)
) -> list[TokenInfo]:
    records = await run_in_threadpool(auth_service(request).list_tokens)
    return [TokenInfo(**r.public()) for r in records]


@router.delete("/tokens/{token_id}", summary="Revoke an API token")
async def revoke_token(
    token_id: str, request: Request, _: Principal = require(Permission.TOKENS_MANAGE)
) -> TokenInfo:
    record = await run_in_threadpool(auth_service(request).revoke_token, token_id)
    await audit(request, "token.revoke", target=record.id)
    return TokenInfo(**record.public())


class Me(BaseModel):
    """Who the caller is, what its role may do, and where its files live."""

    name: str
    role: Role
    auth: bool = Field(description="false: auth is off and every caller is an admin")
    permissions: list[str]
    own_tasks_only: bool = Field(description="sees and acts on the tasks it submitted only")
    files_prefix: str | None = Field(
        None, description="its files live under this key prefix in the input and output buckets"
    )
    secrets: list[str] = Field(description="worker secrets its tasks may ask for ('*': any)")


@router.get("/me", summary="Who am I: role, permissions, my files' prefix, my secrets")
async def me(request: Request, principal: Principal = require(Permission.API_INFO)) -> Me:
    owner = owner_filter(principal)
    return Me(
        name=principal.name,
        role=principal.role,
        auth=auth_service(request).enabled,
        permissions=sorted(p.value for p in Permission if principal.may(p) and p.value != "public"),
        own_tasks_only=owner is not None,
        files_prefix=f"{owner}/" if owner else None,
        secrets=["*"] if principal.may_use_secret("*") else sorted(principal.secrets),
    )


# -- worker enrollment --------------------------------------------------------------
class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=64, description="only this worker name may use it")
    pool: str | None = Field(None, max_length=64)
    ttl: str | None = Field(None, max_length=32, description="lifetime, default 5m")


class EnrollmentToken(BaseModel):
    token: str = Field(description="one-time: exchange it with POST /api/workers/enroll")
    expires_at: datetime
    name: str | None = None
    pool: str | None = None


class EnrollBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=4096)
    name: str = Field(min_length=1, max_length=64)


class WorkerCredentialOut(BaseModel):
    worker_id: str
    credential: str = Field(description="a bearer token of role worker")
    expires_at: datetime

    @classmethod
    def of(cls, cred: WorkerCredential) -> WorkerCredentialOut:
        return cls(worker_id=cred.worker_id, credential=cred.credential, expires_at=cred.expires_at)


@router.post(
    "/workers/enrollment-tokens",
    status_code=201,
    summary="Create a one-time worker enrollment token",
)
async def create_enrollment_token(
    body: EnrollmentTokenCreate,
    request: Request,
    _: Principal = require(Permission.TOKENS_MANAGE),
) -> EnrollmentToken:
    token, expires_at = await run_in_threadpool(
        lambda: auth_service(request).create_enrollment_token(
            name=body.name, pool=body.pool, ttl=_seconds(body.ttl, "ttl")
        )
    )
    await audit(request, "worker.enrollment_token", target=body.name, detail=body.pool)
    return EnrollmentToken(token=token, expires_at=expires_at, name=body.name, pool=body.pool)


@router.post(
    "/workers/enroll",
    summary="Exchange an enrollment token for a worker credential (once)",
    dependencies=[rate_limit("enroll")],
)
async def enroll(
    body: EnrollBody, request: Request, _: Principal = require(Permission.PUBLIC)
) -> WorkerCredentialOut:
    who = Principal("-", body.name[:64], Role.WORKER)
    try:
        cred = await run_in_threadpool(auth_service(request).enroll, body.token, body.name)
    except (Unauthenticated, Forbidden, InvalidRequest) as exc:
        log.warning("Worker enrollment refused for %r: %s", body.name[:64], exc.message)
        await audit(
            request,
            "worker.enroll",
            target=body.name[:64],
            ok=False,
            detail=exc.message,
            principal=who,
        )
        raise
    await audit(request, "worker.enroll", target=cred.worker_id, principal=who)
    return WorkerCredentialOut.of(cred)


@router.post("/workers/rotate", summary="Swap this worker's credential for a new one")
async def rotate(
    request: Request, principal: Principal = require(Permission.WORKER_PROTOCOL)
) -> WorkerCredentialOut:
    cred = await run_in_threadpool(auth_service(request).rotate, principal)
    await audit(request, "worker.rotate", target=cred.worker_id)
    return WorkerCredentialOut.of(cred)


@router.delete("/workers/{worker_id}/credential", summary="Revoke a worker's credentials")
async def revoke_worker(
    worker_id: str, request: Request, _: Principal = require(Permission.TOKENS_MANAGE)
) -> dict[str, Any]:
    n = await run_in_threadpool(auth_service(request).revoke_worker, worker_id)
    await audit(request, "worker.revoke", target=worker_id, detail=f"{n} credential(s)")
    return {"worker_id": worker_id, "revoked": n}


# -- audit ----------------------------------------------------------------------------
@router.get("/audit", summary="The audit log, newest first")
async def list_audit(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, max_length=64, description="next_cursor of the last page"),
    _: Principal = require(Permission.AUDIT_READ),
) -> AuditPage:
    return await run_in_threadpool(auth_service(request).list_audit, limit, cursor)
