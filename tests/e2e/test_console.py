"""The web console in a real headless Chromium against a running `conveyor up`.

Every page is driven the way an operator would: upload through the form and
watch the task finish live, filter, open a task, cancel, retry, clear the
queue, switch language, lose the connection and get it back.  Every request
each page makes is logged and must stay on 127.0.0.1; script errors fail the
test.  Screenshots of every page in English and Chinese (and at phone width)
land in ``test-output/screenshots/``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, Server, free_port, launch, make_clip, need_tool, wait_task
from tests.e2e.console_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SHOTS,
    Tab,
    launch_on,
    need_browser,
    open_tab,
    ulid_at,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


# -- fixtures ------------------------------------------------------------------------
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
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`conveyor up`: API, console, worker and upload trigger in one process."""
    need_tool("ffmpeg", "ffprobe")
    srv = launch(tmp_path_factory.mktemp("console-up"), "up", env=FAST_ENV)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`conveyor serve` with no worker and no upload trigger: tasks stay where we put them."""
    env = {**FAST_ENV, "CONVEYOR_TRIGGER_ENABLED": "false"}
    srv = launch(tmp_path_factory.mktemp("console-idle"), "serve", env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clip(clips_dir: Path) -> Path:
    return make_clip(clips_dir / "console.mp4", width=320, height=240, seconds=6.0)


@pytest.fixture(scope="module")
def long_clip(clips_dir: Path) -> Path:
    return make_clip(clips_dir / "console-long.mp4", width=640, height=360, seconds=40.0)


def upload(server: Server, path: Path | bytes, key: str) -> dict[str, Any]:
    data = path if isinstance(path, bytes) else path.read_bytes()
    r = server.client.put(f"/api/files/input/{key}", content=data)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def submit(server: Server, key: str, types: list[str], **extra: Any) -> str:
    body = {"input_bucket": "input", "input_key": key, "transcode_types": types, **extra}
    r = server.client.post("/api/queue/add", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


@pytest.fixture(scope="module")
def done_task(up: Server, clip: Path) -> str:
    """A completed transcode with a preview, a thumbnail and a log, for the screenshots."""
    up_key = upload(up, clip, "shots/sample.mp4")["upload_key"]
    task_id = submit(up, "shots/sample.mp4", ["mp4_smooth", "thumbnail"], idempotency_key=up_key)
    assert wait_task(up.client, task_id, timeout=90)["status"] == "completed"
    return task_id


def badge(tab: Tab, scope: str) -> str:
    return str(tab.page.get_attribute(f"{scope} .badge", "data-status"))


# -- the tests ---------------------------------------------------------------------------
def test_add_task_by_upload_and_watch_it_run(browser: Any, up: Server, clip: Path) -> None:
    with open_tab(browser, up.url) as tab:
        page = tab.page
        tab.go("/admin/tasks/new")
        tab.live()
        # the defaults are pre-ticked, the others are not
        ticked = {
            el.get_attribute("value"): el.is_checked()
            for el in page.query_selector_all("input[name=transcode_types]")
        }
        assert ticked["mp4_standard"] and ticked["mp4_smooth"] and ticked["thumbnail"], ticked
        assert not ticked["hdlbr_h265"] and not ticked["h265_mute"], ticked
        assert page.is_checked("#src-upload")
        tab.shot("new-en")

        page.uncheck("input[name=transcode_types][value=mp4_standard]")
        page.set_input_files("#file", str(clip))
        assert page.input_value("#key") == "console.mp4"  # the file's name, editable
        page.fill("#key", "console/upload one.mp4")
        page.fill("#priority", "5")
        # record the upload bar across the navigation that follows the upload
        page.evaluate(
            """() => {
              const bar = document.getElementById('upload-progress');
              sessionStorage.setItem('up', '[]');
              new MutationObserver(() => {
                const seen = JSON.parse(sessionStorage.getItem('up'));
                seen.push(Number(bar.value));
                sessionStorage.setItem('up', JSON.stringify(seen));
              }).observe(bar, {attributes: true});
            }"""
        )
        with page.expect_navigation(url=re.compile(r"/admin/tasks/[0-9a-z]{26}$")):
            page.click("#submit-task")
        task_id = page.url.rsplit("/", 1)[1]
        tab.mark()
        # watch the task page: status and progress as the stream delivers them
        page.evaluate(
            """() => {
              window.__seen = [];
              const note = () => {
                const b = document.querySelector('#task-head .badge');
                const p = document.querySelector('#task-head .pct');
                window.__seen.push([b && b.dataset.status, p && p.dataset.pct]);
              };
              note();
              new MutationObserver(note).observe(
                document.getElementById('task-head'), {childList: true, subtree: true});
            }"""
        )
        uploads = page.evaluate("() => JSON.parse(sessionStorage.getItem('up') || '[]')")
        assert uploads and max(uploads) == 100, uploads
        page.wait_for_selector("#flash .flash.ok")  # "Task queued."
        page.wait_for_selector("#task-head .badge[data-status=completed]", timeout=90_000)
        assert page.text_content("#task-head .pct").strip() == "100 %"  # type: ignore[union-attr]
        assert page.get_attribute("#task-head .fill", "style") == "width: 100%"
        seen = page.evaluate("() => window.__seen")
        assert tab.not_reloaded(), "the page was reloaded"
        assert seen[0][0] in ("pending", "processing"), seen  # it opened before the end...
        assert seen[-1] == ["completed", "100"], seen  # ...and was updated live
        # outputs: a playable H.264 preview, the thumbnail, download links
        page.wait_for_selector("#preview-video")
        page.wait_for_function(
            "() => document.getElementById('preview-video').readyState >= 1", timeout=15_000
        )
        assert page.evaluate("() => document.getElementById('preview-video').duration") > 5
        page.wait_for_function(
            "() => document.getElementById('preview-thumb').naturalWidth > 0", timeout=15_000
        )
        links = page.eval_on_selector_all("a.download", "els => els.map(e => e.href)")
        assert len(links) == 2, links
        for href in links:
            assert httpx.get(href, timeout=10).status_code == 200
        # the log streamed in, attempt separator included
        page.wait_for_function(
            "() => document.getElementById('log').textContent.includes('Task completed')"
        )
        log_text = page.text_content("#log") or ""
        assert "attempt 1" in log_text and "Transcode completed" in log_text
        assert len(re.findall("Task received", log_text)) == 1, "a log line was shown twice"
        tab.shot("task-en")

        # the other way in: name an object already in a bucket
        tab.go("/admin/tasks/new")
        page.check("#src-existing")
        assert page.is_hidden("#file")
        page.fill("#key", "console/upload one.mp4")
        for box in page.query_selector_all("input[name=transcode_types]"):
            box.set_checked(box.get_attribute("value") == "thumbnail")
        with page.expect_navigation(url=re.compile(r"/admin/tasks/[0-9a-z]{26}$")):
            page.click("#submit-task")
        second = page.url.rsplit("/", 1)[1]
        assert second != task_id
        page.wait_for_selector("#task-head .badge[data-status=completed]", timeout=60_000)
        assert "Thumbnail (JPG)" in (page.text_content("#task-outputs") or "")

    task = up.client.get(f"/api/tasks/{task_id}").json()
    assert task["status"] == "completed" and task["trigger"] == "console"
    assert task["priority"] == 5
    assert task["params"]["transcode_types"] == ["mp4_smooth", "thumbnail"]
    assert task["input"] == {"bucket": "input", "key": "console/upload one.mp4"}
    time.sleep(1.5)  # the upload trigger has had several scans: still one task for the upload
    same = up.client.get("/api/tasks", params={"limit": 100}).json()["tasks"]
    mine = [t["id"] for t in same if t["input"]["key"] == "console/upload one.mp4"]
    assert sorted(mine) == sorted([task_id, second])  # no third one from the upload trigger


def test_cancel_a_running_task(browser: Any, up: Server, long_clip: Path) -> None:
    key = upload(up, long_clip, "console/long.mp4")["upload_key"]
    task_id = submit(up, "console/long.mp4", ["hdlbr_h265", "lcd_h265"], idempotency_key=key)
    with open_tab(browser, up.url) as tab:
        page = tab.page
        # the dashboard shows the worker running it, with its progress moving
        tab.go("/admin")
        tab.live()
        card = f"#workers li:has(a[href='/admin/tasks/{task_id}'])"
        page.wait_for_selector(f"{card} .badge[data-status=processing]", timeout=30_000)
        first = float(page.get_attribute(f"{card} .pct", "data-pct") or 0)
        page.wait_for_function(
            f'() => Number(document.querySelector("{card} .pct").dataset.pct) > {first}',
            timeout=30_000,
        )
        assert (
            page.get_attribute("#stat-processing", "id")
            and page.text_content("#stat-processing") == "1"
        )
        tab.shot("dashboard-running-en")
        tab.go(f"/admin/tasks/{task_id}")
        tab.live()
        tab.mark()
        page.wait_for_selector("#task-head .badge[data-status=processing]", timeout=30_000)
        page.wait_for_function(
            "() => Number(document.querySelector('#task-head .pct').dataset.pct) > 0",
            timeout=30_000,
        )
        tab.shot("task-running-en")
        page.click("#cancel-task")
        page.wait_for_selector("#flash .flash.ok")
        page.wait_for_selector("#task-head .badge[data-status=cancelled]", timeout=30_000)
        assert tab.not_reloaded()
        assert page.query_selector("#retry-task") is not None  # a cancelled task can be retried
        page.wait_for_function(
            "() => document.getElementById('task-info').textContent.includes('cancelled')"
        )
    assert up.client.get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"


def test_retry_a_failed_task_from_the_list(browser: Any, up: Server, clip: Path) -> None:
    fake = upload(up, b"this is not a video\n" * 20, "console/broken.mp4")["upload_key"]
    task_id = submit(up, "console/broken.mp4", ["thumbnail"], idempotency_key=fake)
    assert wait_task(up.client, task_id)["status"] == "failed"
    upload(up, clip, "console/broken.mp4")  # fix the input, then retry from the console
    with open_tab(browser, up.url) as tab:
        page = tab.page
        tab.go("/admin/tasks?status=failed&q=console/broken")
        tab.live()
        tab.mark()
        rows = page.query_selector_all("tbody tr[data-task]")
        assert [r.get_attribute("data-task") for r in rows] == [task_id]
        row = f"tr[data-task='{task_id}']"
        assert badge(tab, row) == "failed"
        tab.shot("tasks-failed-en")
        page.check(f"{row} input[name=ids]")
        assert page.text_content("#selected-count") == "1 selected"
        page.click("#bulk-retry")
        page.wait_for_selector("#flash .flash.ok")
        assert "Retried 1 task" in (page.text_content("#flash") or "")
        page.wait_for_selector(f"{row} .badge[data-status=completed]", timeout=60_000)
        assert tab.not_reloaded()
        # and the task page says it took two attempts' worth of history
        tab.go(f"/admin/tasks/{task_id}")
        assert "thumbnail" in (page.text_content("#task-outputs") or "")
        assert len(page.query_selector_all("table.attempts tbody tr")) == 2


def _seed_history(server: Server) -> dict[str, Any]:
    """Tasks three days old (two failed, one completed) and 25 pending ones, through the backend."""
    from conveyor.backends.sqlite import SQLiteBackend
    from conveyor.models import InputRef, OutputFile, Task

    backend = SQLiteBackend(server.data_dir / "conveyor.db")
    old = (datetime.now(UTC) - timedelta(days=3)).replace(hour=20, minute=30, second=0)
    try:
        ids: dict[str, Any] = {"old": [], "pending": []}
        for i in range(3):
            created = old + timedelta(minutes=i)
            task = Task(
                id=ulid_at(created),
                input=InputRef(bucket="input", key=f"seed/old-{i}.mp4"),
                params={"transcode_types": ["thumbnail"]},
                created_at=created,
                updated_at=created,
            )
            backend.submit(task)
            ids["old"].append(task.id)
        claimed = {c.task.id: c for c in backend.claim("seed-worker", ["transcode"], 3, 60)}
        assert sorted(claimed) == sorted(ids["old"])
        for i, task_id in enumerate(ids["old"]):
            lease = claimed[task_id].lease
            if i == 0:
                out = OutputFile(name="thumbnail", bucket="output", key=f"seed/old-{i}/t.jpg")
                backend.complete(lease, [out])
            else:
                backend.fail(lease, "encoder crashed", retryable=False)
        for i in range(25):
            task = Task(
                input=InputRef(bucket="input", key=f"seed/waiting-{i:02d}.mp4"),
                params={"transcode_types": ["thumbnail"]},
            )
            backend.submit(task)
            ids["pending"].append(task.id)
        ids["old_date"] = old.strftime("%Y-%m-%d")
        return ids
    finally:
        backend.close()


def test_filter_by_status_date_and_text_and_page(browser: Any, idle: Server) -> None:
    seeded = _seed_history(idle)
    with open_tab(browser, idle.url) as tab:
        page = tab.page
        tab.go("/admin/tasks")
        tab.live()
        # status, through the form
        page.select_option("#f-status", "failed")
        with page.expect_navigation():
            page.click("#f-apply")
        statuses = page.eval_on_selector_all(
            "tbody tr[data-task]", "r => r.map(e => e.dataset.status)"
        )
        assert statuses == ["failed", "failed"], statuses
        # date (a UTC day), through the form: only the three old tasks
        page.select_option("#f-status", "")
        page.fill("#f-date", seeded["old_date"])
        with page.expect_navigation():
            page.click("#f-apply")
        shown = page.eval_on_selector_all("tbody tr[data-task]", "r => r.map(e => e.dataset.task)")
        assert sorted(shown) == sorted(seeded["old"]), shown
        tab.shot("tasks-filtered-en")
        # date + status chip
        with page.expect_navigation():
            page.click("a.chip-completed")
        shown = page.eval_on_selector_all("tbody tr[data-task]", "r => r.map(e => e.dataset.task)")
        assert shown == [seeded["old"][0]]
        # dates show in the browser's zone (Asia/Shanghai: 20:30 UTC is 04:30 next day)
        tab.go(f"/admin/tasks/{seeded['old'][0]}")
        created = page.query_selector("#task-info time")
        assert created is not None
        assert "4:30:00" in (created.text_content() or ""), created.text_content()
        assert "Asia/Shanghai" in (created.get_attribute("title") or "")
        # free text on the input key
        tab.go("/admin/tasks?q=waiting-1")
        keys = page.eval_on_selector_all("tbody td.input", "r => r.map(e => e.textContent.trim())")
        assert sorted(keys) == [f"input/seed/waiting-{i}.mp4" for i in range(10, 20)], keys
        # paging: 25 pending at 20 a page
        tab.go("/admin/tasks?status=pending&limit=20")
        assert len(page.query_selector_all("tbody tr[data-task]")) == 20
        with page.expect_navigation():
            page.click("#page-next")
        assert len(page.query_selector_all("tbody tr[data-task]")) == 5
        assert "Page 2" in (page.text_content(".pager") or "")
        with page.expect_navigation():
            page.click("#page-prev")
        assert len(page.query_selector_all("tbody tr[data-task]")) == 20
        assert page.query_selector("#page-prev") is None


def _pending(server: Server, prefix: str, n: int) -> list[str]:
    from conveyor.backends.sqlite import SQLiteBackend
    from conveyor.models import InputRef, Task

    backend = SQLiteBackend(server.data_dir / "conveyor.db")
    try:
        tasks = [Task(input=InputRef(bucket="input", key=f"{prefix}{i}.mp4")) for i in range(n)]
        return [backend.submit(t)[0].id for t in tasks]
    finally:
        backend.close()


def test_bulk_cancel_and_clear_the_queue(browser: Any, idle: Server) -> None:
    ids = _pending(idle, "bulk/clip-", 5)
    with open_tab(browser, idle.url) as tab:
        page = tab.page
        # bulk cancel three of them
        tab.go("/admin/tasks?status=pending&q=bulk/clip-")
        tab.live()
        tab.mark()
        boxes = page.query_selector_all("tbody input[name=ids]")[:3]
        chosen = [b.get_attribute("value") for b in boxes]
        assert len(chosen) == 3 and set(chosen) <= set(ids)
        for b in boxes:
            b.check()
        page.click("#bulk-cancel")
        page.wait_for_selector("#flash .flash.ok")
        assert "Cancelled 3 tasks" in (page.text_content("#flash") or "")
        for task_id in chosen:
            page.wait_for_selector(f"tr[data-task='{task_id}'] .badge[data-status=cancelled]")
        assert tab.not_reloaded()

        # clear the queue: the confirmation names the number it will cancel
        status = idle.client.get("/api/queue/status").json()
        waiting = status["pending"] + status["delayed"]
        assert waiting >= 1
        tab.go("/admin/queue")
        tab.live()
        assert page.text_content("#q-waiting") == str(status["pending"])
        tab.shot("queue-en")
        page.click("#clear-start")
        page.wait_for_selector("#clear-confirm-text")
        text = page.text_content("#clear-confirm-text") or ""
        assert f"This will cancel {waiting} waiting tasks" in text, text
        assert page.text_content("#clear-confirm") == f"Cancel {waiting} tasks"
        tab.shot("queue-confirm-en")
        page.click("#clear-confirm")
        page.wait_for_selector("#clear-result")
        assert page.text_content("#clear-result") == f"{waiting} waiting tasks cancelled."
        page.wait_for_function("() => document.getElementById('q-waiting').textContent === '0'")
        page.wait_for_function(
            "() => document.querySelector('[data-count=pending]').textContent === '0'"
        )
        # asking again: nothing left to cancel
        # (the last answer's #clear-result stays on the page until htmx swaps the panel:
        # wait for the new text rather than for the element)
        page.click("#clear-start")
        page.wait_for_function(
            "() => (document.getElementById('clear-result')?.textContent || '')"
            ".includes('nothing to cancel')"
        )
    after = idle.client.get("/api/queue/status").json()
    assert after["pending"] == 0 and after["delayed"] == 0


def test_switch_to_chinese(browser: Any, up: Server, done_task: str) -> None:
    # the browser's language picks Chinese...
    with open_tab(browser, up.url, locale="zh-CN") as tab:
        page = tab.page
        tab.go("/admin")
        assert page.get_attribute("html", "lang") == "zh-CN"
        assert page.text_content("h1") == "仪表盘"
        assert page.text_content(".main-nav") and "添加任务" in (
            page.text_content(".main-nav") or ""
        )
        tab.go(f"/admin/tasks/{done_task}")
        assert page.text_content("#task-head .badge") == "已完成"
        assert "输出" in (page.text_content("#task-outputs h2") or "")
        # ...and the switch on the page overrides it, for every page after
        with page.expect_navigation():
            page.click(".lang-switch a[data-lang=en]")
        assert page.get_attribute("html", "lang") == "en"
        assert page.text_content("#task-head .badge") == "completed"
        tab.go("/admin/queue")
        assert page.text_content("h1") == "Queue"
    # an English browser switches to Chinese on any page
    with open_tab(browser, up.url, locale="en-US") as tab:
        page = tab.page
        tab.go("/admin/tasks")
        assert page.text_content("h1") == "Tasks"
        with page.expect_navigation():
            page.click(".lang-switch a[data-lang=zh-CN]")
        assert page.url.endswith("/admin/tasks")
        assert page.text_content("h1") == "任务"
        assert page.text_content("#bulk-retry") == "重试所选"
        tab.go("/admin/tasks/new")
        tab.live()
        assert page.text_content("h1") == "添加任务"
        assert page.text_content("#conn .when-live") == "实时"


PAGES = [
    ("dashboard", "/admin"),
    ("tasks", "/admin/tasks"),
    ("task", "/admin/tasks/{task}"),
    ("queue", "/admin/queue"),
    ("new", "/admin/tasks/new"),
    ("error", "/admin/tasks/does-not-exist"),
]


def test_screenshots_every_page_both_languages_and_phone(
    browser: Any, up: Server, done_task: str
) -> None:
    for lang, locale in (("en", "en-US"), ("zh-CN", "zh-CN")):
        with open_tab(browser, up.url, locale=locale) as tab:
            for name, path in PAGES:
                resp = tab.go(path.format(task=done_task))
                assert resp.status == (404 if name == "error" else 200), (name, resp.status)
                assert tab.page.get_attribute("html", "lang") == lang
                if name != "error":
                    tab.live()
                if name == "dashboard":  # the charts drew
                    tab.page.wait_for_selector("#chart-throughput canvas")
                    tab.page.wait_for_selector("#chart-rate canvas")
                tab.shot(f"{name}-{lang}")
            tab.go("/admin/queue")
            tab.page.click("#clear-start")
            tab.page.wait_for_selector("#clear-panel .result, #clear-panel form")
            tab.shot(f"queue-clear-{lang}")
        with open_tab(browser, up.url, locale=locale, width=390, height=844) as tab:
            for name, path in PAGES[:3]:
                tab.go(path.format(task=done_task))
                tab.live()
                width = tab.page.evaluate("() => document.documentElement.scrollWidth")
                assert width <= 392, f"{name} is {width}px wide on a 390px phone"
                tab.shot(f"phone-{name}-{lang}")
    names = sorted(p.name for p in SHOTS.glob("*.png"))
    for name, _ in PAGES:
        assert f"{name}-en.png" in names and f"{name}-zh-CN.png" in names


def test_works_with_the_network_cut_off(browser: Any, up: Server, done_task: str) -> None:
    """Everything the console needs comes from the Conveyor server itself."""
    with open_tab(browser, up.url, block_foreign=True) as tab:
        page = tab.page
        for _, path in PAGES[:5]:
            tab.go(path.format(task=done_task))
            tab.live()
            assert page.evaluate("() => typeof htmx === 'object'")
        tab.go("/admin")
        page.wait_for_selector("#chart-throughput canvas")
        assert page.evaluate("() => typeof uPlot === 'function'")
        assert tab.requests and all(u.startswith(up.url) for u in tab.requests), tab.requests
        assert any("/admin/static/vendor/htmx.min.js" in u for u in tab.requests)
        assert any("/admin/events" in u for u in tab.requests)


def test_connection_lost_banner_reconnects_and_fast_shutdown(
    browser: Any, tmp_path: Path, small_clip: Path
) -> None:
    need_tool("ffmpeg", "ffprobe")
    port = free_port()
    first = launch_on(tmp_path, port, "up", env=FAST_ENV)
    second: Server | None = None
    try:
        with open_tab(browser, first.url, expect_stream_errors=True) as tab:
            page = tab.page
            tab.go("/admin")
            tab.live()
            tab.mark()
            assert page.is_hidden("#offline-banner")
            # a browser holding a live stream must not hold up shutdown
            t0 = time.monotonic()
            first.stop()
            stopped_in = time.monotonic() - t0
            assert stopped_in < 5, f"`conveyor up` took {stopped_in:.1f}s to stop"
            page.wait_for_selector("#offline-banner", state="visible", timeout=10_000)
            assert page.get_attribute("#conn", "data-state") == "lost"
            tab.shot("connection-lost-en", full_page=False)
            # the server comes back on the same address: the page reconnects by itself
            second = launch_on(tmp_path, port, "up", env=FAST_ENV)
            page.wait_for_selector("#offline-banner", state="hidden", timeout=30_000)
            tab.live()
            upload(second, small_clip, "after/restart.mp4")
            task_id = wait_for(
                lambda: next(
                    (t["id"] for t in second.client.get("/api/tasks").json()["tasks"]), None
                ),
                what="the upload trigger to queue a task",
            )
            page.wait_for_selector(f"#recent tr[data-task='{task_id}']", timeout=20_000)
            assert tab.not_reloaded()
    finally:
        first.stop()
        if second is not None:
            second.stop()
