"""Roles and the permissions each one holds: the one table every face consults.

A route names the permission it needs, never a role, so that a new role is one
row here and not a search through the routes.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    DEVELOPER = "developer"  # a submitter that may also run code (container tasks, /train)
    SUBMITTER = "submitter"
    VIEWER = "viewer"
    WORKER = "worker"


class Permission(StrEnum):
    PUBLIC = "public"  # health probes: load balancers carry no token
    API_INFO = "api:info"  # the API's schema and docs (/openapi.json, /docs), /api/me
    TASKS_READ = "tasks:read"
    TASKS_SUBMIT = "tasks:submit"
    # tasks that run code the caller supplies (kinds whose processor says runs_caller_code:
    # container; the training agent's /train): that code sees what its sandbox shows it
    TASKS_RUN_CODE = "tasks:run_code"
    TASKS_CANCEL = "tasks:cancel"  # a submitter's own tasks; every task for operators
    TASKS_RETRY = "tasks:retry"
    QUEUE_CLEAR = "queue:clear"
    FILES_READ = "files:read"
    FILES_WRITE = "files:write"
    WORKERS_READ = "workers:read"
    WORKERS_MANAGE = "workers:manage"  # drain, revoke a worker's credential
    METRICS_READ = "metrics:read"
    TOKENS_MANAGE = "tokens:manage"  # API tokens and worker enrollment tokens
    AUDIT_READ = "audit:read"
    WEBHOOKS_MANAGE = "webhooks:manage"  # event subscriptions, their delivery logs, redelivery
    WORKER_PROTOCOL = "worker:protocol"  # claim, heartbeat, progress, complete, rotate


_READ = {
    Permission.API_INFO,
    Permission.TASKS_READ,
    Permission.FILES_READ,
    Permission.WORKERS_READ,
    Permission.METRICS_READ,
}

_SUBMIT = _READ | {
    Permission.TASKS_SUBMIT,
    Permission.TASKS_CANCEL,
    Permission.TASKS_RETRY,
    Permission.FILES_WRITE,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # everything but speaking as a worker: a worker's credential is its own
    Role.ADMIN: frozenset(set(Permission) - {Permission.WORKER_PROTOCOL}),
    Role.OPERATOR: frozenset(
        _READ
        | {
            Permission.TASKS_SUBMIT,
            Permission.TASKS_CANCEL,
            Permission.TASKS_RETRY,
            Permission.QUEUE_CLEAR,
            Permission.FILES_WRITE,
            Permission.WORKERS_MANAGE,
            Permission.WEBHOOKS_MANAGE,
        }
    ),
    Role.SUBMITTER: frozenset(_SUBMIT),
    # least privilege: an operator runs the queue, it does not run code on the workers
    Role.DEVELOPER: frozenset(_SUBMIT | {Permission.TASKS_RUN_CODE}),
    Role.VIEWER: frozenset(_READ),
    Role.WORKER: frozenset({Permission.WORKER_PROTOCOL}),
}


def allows(role: Role, permission: Permission) -> bool:
    return permission is Permission.PUBLIC or permission in ROLE_PERMISSIONS[role]


# roles whose tasks and files are their own: they see, cancel and retry only the tasks
# they submitted, and read and write only their own files (conveyor.service)
OWN_TASKS_ONLY = frozenset({Role.SUBMITTER, Role.DEVELOPER})


def sees_only_own_tasks(role: Role) -> bool:
    """A submitter (or developer) sees, cancels and retries the tasks it submitted, and
    reads and writes only its own files."""
    return role in OWN_TASKS_ONLY


def roles_with(permission: Permission) -> list[Role]:
    """The roles that hold ``permission``, in table order (for messages and pages)."""
    return [r for r in Role if permission in ROLE_PERMISSIONS[r]]
