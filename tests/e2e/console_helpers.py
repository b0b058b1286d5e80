"""Shared pieces of the console's browser tests: a real Chromium driven by playwright.

Debian's ``chromium`` is used (no browser download); a missing browser or
playwright fails the run when CI=true and skips elsewhere, like every other
tool the suite needs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import IN_CI, Server, start_process, wait_healthy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--disable-domain-reliability",
]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "screenshots"
LOCAL_HOSTS = {"127.0.0.1"}


def need_browser() -> Any:
    """The playwright module, or skip/fail when it or Chromium is missing."""
    problem = None
    try:
        from playwright import sync_api
    except ImportError:
        problem = "python playwright is not installed"
    if problem is None and not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        problem = f"Chromium is not installed at {CHROMIUM}"
    if problem is not None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_api


@dataclass
class Tab:
    """A browser page plus the log of every request it made and every script error."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path, wait_until="domcontentloaded")

    def live(self, timeout: float = 10_000) -> None:
        """Wait until the page's event stream is connected."""
        self.page.wait_for_selector("#conn[data-state='live']", timeout=timeout)

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.wait_for_timeout(300)  # let times and charts settle
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def mark(self) -> None:
        """Set a marker that only survives if the page is never reloaded."""
        self.page.evaluate("() => { window.__noReload = 'still-here'; }")

    def not_reloaded(self) -> bool:
        return bool(self.page.evaluate("() => window.__noReload === 'still-here'"))

    def foreign(self) -> list[str]:
        return [u for u in self.requests if not is_local(u)]


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("data", "blob", "about"):
        return True
    return parsed.hostname in LOCAL_HOSTS


@contextmanager
def open_tab(
    browser: Any,
    base: str,
    *,
    locale: str = "en-US",
    width: int = 1280,
    height: int = 900,
    block_foreign: bool = True,
    expect_stream_errors: bool = False,
) -> Iterator[Tab]:
    """A fresh browser context: its own cookies, language and request log.

    Every request is logged; anything not for 127.0.0.1 is refused (so a page
    that needed the internet would visibly break) and fails the test.
    """
    ctx = browser.new_context(
        locale=locale, viewport={"width": width, "height": height}, timezone_id="Asia/Shanghai"
    )
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    tab = Tab(page=page, base=base)
    page.on("request", lambda req: tab.requests.append(req.url))
    page.on("pageerror", lambda exc: tab.errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            tab.errors.append(f"console.{msg.type}: {msg.text}")
            if msg.type == "error" and "net::ERR_" not in msg.text and "status of 4" not in msg.text
            else None
        ),
    )
    if block_foreign:

        def guard(route: Any) -> None:
            if is_local(route.request.url):
                route.continue_()
            else:
                route.abort()

        ctx.route("**/*", guard)
    try:
        yield tab
    finally:
        ctx.close()
    assert tab.foreign() == [], f"requests left the machine: {tab.foreign()}"
    errors = tab.errors
    if expect_stream_errors:  # htmx logs each failed reconnect of the event stream
        errors = [e for e in errors if e != "console.error: [object Event]"]
    assert errors == [], f"script errors in the page: {errors}"


def launch_on(
    tmp: Path, port: int, command: str = "up", *, env: dict[str, str] | None = None
) -> Server:
    """Like ``tests.conftest.launch`` but on a given port (to restart a server in place)."""
    data_dir = tmp / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = tmp / f"{command}-{port}.log"
    args = [command, "--port", str(port), "--data-dir", str(data_dir)]
    proc = start_process(args, data_dir, log_path, env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log_path)
    return Server(url=url, data_dir=data_dir, proc=proc, log_path=log_path)


def wait_for(
    fn: Callable[[], Any], *, timeout: float = 30, interval: float = 0.2, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last={last!r}")


def ulid_at(ts: datetime) -> str:
    """A task id minted at ``ts`` (ids are time-ordered ULIDs)."""
    from ulid import ULID

    return str(ULID.from_datetime(ts)).lower()
