"""The console in a real Chromium against `conveyor serve` with authentication on.

The server prints its first admin token once at start; the test reads it from
the server's output, makes a viewer, an operator and a submitter token
through the API, and logs in as each: the viewer sees no action and is
refused one, the operator cancels a task from the page (htmx sends the CSRF
token from <body hx-headers>), the submitter uploads and submits through the
form (the upload's XHR carries the CSRF token too) into its own folder.  The console's
Content-Security-Policy forbids inline script: any violation is a console
error and fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, Server, launch
from tests.e2e.console_helpers import CHROMIUM, CHROMIUM_ARGS, need_browser, open_tab, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = need_browser()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    env = {**FAST_ENV, "CONVEYOR_TRIGGER_ENABLED": "false", "CONVEYOR_AUTH": "on"}
    srv = launch(tmp_path_factory.mktemp("console-auth"), "serve", env=env)
    try:
        found = wait_for(
            lambda: re.search(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b", srv.log_text()),
            timeout=10,
            what="the first admin token in the server's output",
        )
        admin = found.group(1)
        assert srv.log_text().count(admin) == 1  # printed once, never logged again
        tokens = {"admin": admin}
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {admin}"}) as c:
            for role in ("viewer", "operator", "submitter"):
                r = c.post("/api/tokens", json={"name": f"e2e-{role}", "role": role})
                assert r.status_code == 201, r.text
                tokens[role] = r.json()["token"]
        yield srv, tokens
    finally:
        srv.stop()


def _api(srv: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _pending_task(srv: Server, token: str) -> str:
    body = {"kind": "container", "params": {"image": "busybox", "command": ["sleep", "1"]}}
    r = _api(srv, token).post("/api/queue/add", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def _login(tab: Any, token: str, then: str) -> None:
    tab.go(then)
    tab.page.wait_for_selector("#login-form")  # sent to the login page first
    tab.page.fill("#login-token", token)
    tab.page.click("#login-submit")
    tab.page.wait_for_url(re.compile(re.escape(then) + "$"))


def test_anonymous_browser_gets_the_login_page(browser: Any, secured: Any) -> None:
    srv, _ = secured
    assert httpx.get(f"{srv.url}/api/tasks").status_code == 401
    with open_tab(browser, srv.url) as tab:
        tab.go("/admin/tasks")
        tab.page.wait_for_selector("#login-form")
        tab.page.fill("#login-token", "cvy_wrong_token")
        tab.page.click("#login-submit")
        tab.page.wait_for_selector("#flash .flash.error")
        tab.shot("login-refused-en")


def test_viewer_sees_no_action_buttons(browser: Any, secured: Any) -> None:
    srv, tokens = secured
    task_id = _pending_task(srv, tokens["admin"])
    with open_tab(browser, srv.url) as tab:
        page = tab.page
        _login(tab, tokens["viewer"], "/admin/tasks")
        tab.live()
        assert page.text_content("#whoami") and "e2e-viewer" in page.text_content("#whoami")
        assert page.query_selector(f"tr[data-task='{task_id}']") is not None
        for sel in ("#bulk-cancel", "#bulk-retry", "input[name=ids]", "a[href='/admin/tasks/new']"):
            assert page.query_selector(sel) is None, sel
        tab.go(f"/admin/tasks/{task_id}")
        tab.live()
        page.wait_for_selector("#task-head")
        assert page.query_selector("#cancel-task") is None
        tab.go("/admin/queue")
        assert page.query_selector("#clear-start") is None
        tab.shot("viewer-task-list-en")
        # and the server refuses what the page does not offer, CSRF token or not
        csrf = page.get_attribute("meta[name=csrf-token]", "content")
        status = page.evaluate(
            """([id, csrf]) => fetch(`/admin/tasks/${id}/cancel`, {method: "POST",
                 headers: {"X-CSRF-Token": csrf, "HX-Request": "true"}}).then(r => r.status)""",
            [task_id, csrf],
        )
        assert status == 403
    assert _api(srv, tokens["admin"]).get(f"/api/tasks/{task_id}").json()["status"] == "pending"


def test_operator_cancels_a_task(browser: Any, secured: Any) -> None:
    srv, tokens = secured
    task_id = _pending_task(srv, tokens["admin"])
    with open_tab(browser, srv.url, locale="zh-CN") as tab:
        page = tab.page
        _login(tab, tokens["operator"], f"/admin/tasks/{task_id}")
        tab.live()
        tab.mark()
        assert "运维" in (page.text_content("#whoami-role") or "")
        page.click("#cancel-task")
        page.wait_for_selector("#flash .flash.ok")
        page.wait_for_selector("#task-head .badge[data-status=cancelled]", timeout=30_000)
        assert tab.not_reloaded()
        tab.shot("operator-cancelled-zh")
        page.click("#logout")
        page.wait_for_selector("#login-form")
    assert _api(srv, tokens["admin"]).get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"
    events = _api(srv, tokens["admin"]).get("/api/audit").json()["events"]
    mine = [(e["action"], e["actor"]) for e in events if e["target"] == task_id]
    assert ("cancel", "e2e-operator") in mine


def test_submitter_uploads_and_submits(browser: Any, secured: Any, tmp_path: Path) -> None:
    srv, tokens = secured
    clip = tmp_path / "tiny.mp4"
    clip.write_bytes(b"\0" * 2048)
    with open_tab(browser, srv.url) as tab:
        page = tab.page
        _login(tab, tokens["submitter"], "/admin/tasks/new")
        # a submitter may not run code, and its files live in its own folder
        assert page.query_selector("a[href='/admin/tasks/run']") is None
        assert "e2e-submitter/" in (page.text_content("#files-prefix") or "")
        page.set_input_files("#new-task input[type=file]", str(clip))
        page.click("#new-task button[type=submit]")
        page.wait_for_url(re.compile(r"/admin/tasks/[0-9a-z]{26}$"), timeout=30_000)
        task_id = page.url.rsplit("/", 1)[1]
    task = _api(srv, tokens["admin"]).get(f"/api/tasks/{task_id}").json()
    assert task["submitted_by"] == "e2e-submitter"
    assert task["input"]["key"] == "e2e-submitter/tiny.mp4"  # the upload went to its folder
