"""A remote worker's one HTTP connection to the API: reuse, timeouts, retries, errors.

Shared by the remote queue and the remote storage (which streams files
through the API), so both use one connection pool and one credential
(which the worker may rotate while it runs).  Errors come back as the same
domain errors the local engines raise (``conveyor.remote.errors``), so the
worker loop and the processors cannot tell the engines apart.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from conveyor import __version__
from conveyor.errors import ConveyorError, InvalidRequest, ObjectNotFound, RemoteUnavailable
from conveyor.remote.errors import domain_error

log = logging.getLogger("conveyor.remote")

_RETRY_STATUS = (502, 503, 504)
# never sent: safe to retry whatever the request was
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

Content = bytes | Callable[[], Any] | None


def ssl_context(ca_cert: str | None = None) -> ssl.SSLContext:
    """Trust ``ca_cert`` (``--ca-cert``), else ``SSL_CERT_FILE``/``SSL_CERT_DIR``, else the OS."""
    cafile = ca_cert or os.environ.get("SSL_CERT_FILE") or None
    capath = None if ca_cert else os.environ.get("SSL_CERT_DIR") or None
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _retryable(exc: httpx.TransportError, idempotent: bool) -> bool:
    """Unsent requests always, others when idempotent; never a refused certificate."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return False
        cause = cause.__cause__ or cause.__context__
    return idempotent or isinstance(exc, _NOT_SENT)


def _store_error(resp: httpx.Response) -> ConveyorError:
    """An error from a presigned object-store URL (S3 speaks XML, not our JSON)."""
    what = f"the object store answered {resp.status_code}: {resp.text[:300]}"
    if resp.status_code == 404:
        return ObjectNotFound(what)
    return RemoteUnavailable(what)


class ApiConnection:
    """``httpx.Client`` for one API base URL, with the worker's bearer credential.

    ``credential`` is a string or a callable returning the current one (a
    rotating credential file); ``None`` talks to an API running without auth.
    """

    def __init__(
        self,
        url: str,
        *,
        credential: str | Callable[[], str | None] | None = None,
        ca_cert: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest(f"the API URL must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        self._credential = credential
        self.retries = retries
        self.backoff_s = backoff_s
        self._ca_cert = ca_cert
        self._timeout = timeout
        # the trust store is read only where TLS is spoken: reading it costs tens of ms
        # of CPU, much of a Slurm job's start; an http:// API (no redirects followed)
        # gets a context that trusts nothing and is never used
        https = self.url.startswith("https://")
        self.http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=ssl_context(ca_cert) if https else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            headers={"user-agent": f"conveyor-worker/{__version__}"},
            follow_redirects=False,
        )
        self._plain: httpx.Client | None = None
        self._plain_lock = threading.Lock()

    @property
    def plain(self) -> httpx.Client:
        """The client for presigned object-store URLs (no API credential may travel
        there), made on first use: most workers never get one."""
        with self._plain_lock:
            if self._plain is None:
                self._plain = httpx.Client(
                    timeout=httpx.Timeout(self._timeout, connect=10.0),
                    verify=ssl_context(self._ca_cert),
                    follow_redirects=True,
                )
            return self._plain

    @plain.setter
    def plain(self, client: httpx.Client) -> None:
        with self._plain_lock:
            self._plain = client

    def credential(self) -> str | None:
        c = self._credential
        return c() if callable(c) else c

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        cred = self.credential()
        if cred:
            headers["authorization"] = f"Bearer {cred}"
        return headers

    def send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: Any = None,
        content: Content = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        stream: bool = False,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        """One request with retries; error statuses become domain errors.

        Requests that never left (connection refused, connect timeout) are
        retried with exponential back-off whatever they were; requests that
        may have reached the API (read errors, 502/503/504 from a proxy) only
        when ``idempotent``.  ``content`` may be a callable returning a fresh
        body per attempt (a file being streamed).  With ``stream=True`` the
        caller must close the returned response.
        """
        http = client or self.http
        auth = client is None
        shown = urlsplit(path)._replace(query="", fragment="").geturl()  # no presigned query
        for attempt in range(self.retries + 1):
            body = content() if callable(content) else content
            kw: dict[str, Any] = {"json": json, "params": params, "content": body}
            if timeout is not None:
                kw["timeout"] = httpx.Timeout(timeout, connect=10.0)
            req_headers = self._headers(headers) if auth else dict(headers or {})
            try:
                req = http.build_request(method, path, headers=req_headers, **kw)
                resp = http.send(req, stream=stream)
            except httpx.TransportError as exc:
                if attempt < self.retries and _retryable(exc, idempotent):
                    self._pause(attempt, f"{method} {shown}: {type(exc).__name__}")
                    continue
                where = self.url if auth else "the object store"
                raise RemoteUnavailable(f"cannot reach {where}: {exc!r}") from None
            if (
                resp.status_code == 401
                and auth
                and attempt < self.retries
                and self._headers(headers).get("authorization") != req_headers.get("authorization")
            ):
                # rotated while this request was in flight: the server revoked the old
                # credential as it issued the new one; send again with the new one
                resp.close()
                continue
            if resp.status_code in _RETRY_STATUS and idempotent and attempt < self.retries:
                resp.close()
                self._pause(attempt, f"{method} {shown}: HTTP {resp.status_code}")
                continue
            if resp.status_code >= 400:
                if stream:
                    resp.read()
                    resp.close()
                raise domain_error(resp) if auth else _store_error(resp)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, attempt: int, why: str) -> None:
        delay = min(5.0, self.backoff_s * 2**attempt)
        log.warning("API request failed (%s); retrying in %.1f s", why, delay)
        time.sleep(delay)

    def call(self, path: str, body: Any, *, idempotent: bool, timeout: float | None = None) -> Any:
        """POST a JSON body, return the JSON answer (``None`` for 204)."""
        resp = self.send("POST", path, json=body, idempotent=idempotent, timeout=timeout)
        return None if resp.status_code == 204 else resp.json()

    def close(self) -> None:
        self.http.close()
        if self._plain is not None:
            self._plain.close()


def connect(url: str) -> ApiConnection:
    """A connection to ``url`` with the credential and CA bundle the environment names
    (``CONVEYOR_WORKER_CREDENTIAL``, ``CONVEYOR_CA_CERT``): what ``open_queue`` and
    ``open_storage`` give a worker for an ``https://`` URL."""
    return ApiConnection(
        url,
        credential=os.environ.get("CONVEYOR_WORKER_CREDENTIAL") or None,
        ca_cert=os.environ.get("CONVEYOR_CA_CERT") or None,
    )
