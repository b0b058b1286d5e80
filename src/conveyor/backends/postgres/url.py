"""``postgresql://user:pass@host:5432/db?pool_max=8`` (``postgres://`` too).

Besides libpq's own query parameters (``sslmode``, ``connect_timeout``, ...)
the URL takes ``pool_min`` / ``pool_max`` (connection pool size, default
1 / 8), ``pool_timeout`` (seconds to wait for a pooled connection),
``auto_upgrade=1`` (apply missing schema migrations at start-up instead of
refusing to run) and ``prepare_threshold`` (psycopg's server-side prepared
statements, default 5 executions; ``none`` turns them off, as a PgBouncer
in transaction mode older than 1.21 needs; LISTEN itself needs a real
session, so point such a URL at the server or a session pool).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.errors import InvalidRequest

URL_OPTIONS = ("pool_min", "pool_max", "pool_timeout", "auto_upgrade", "prepare_threshold")


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a backend URL into a libpq URL and Conveyor's own options."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidRequest(
            "PostgreSQL backend URL must start with postgresql:// "
            "(e.g. postgresql://user:pass@host:5432/conveyor)"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in URL_OPTIONS}
    rest = [(k, v) for k, v in query if k not in URL_OPTIONS]
    if not any(k == "application_name" for k, _ in rest):
        rest.append(("application_name", "conveyor"))
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    return conninfo, ours


def threshold(value: str) -> int | None:
    return None if value.strip().lower() in ("none", "off", "") else int(value)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")
