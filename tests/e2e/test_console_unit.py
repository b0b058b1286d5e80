"""The console without a browser: catalogues, templates, pages, actions and the
event stream through the real app (FastAPI TestClient, no worker), and the
service and backend additions it relies on."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.backends.base import Backend
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.console.i18n import LANGS, Translator, catalogue, negotiate
from conveyor.console.render import STATIC, TEMPLATES
from conveyor.errors import ConveyorError, ProcessorError
from conveyor.models import InputRef, OutputFile, Task, TaskStatus, Trigger, WorkerInfo
from conveyor.processors.transcode.settings import ALL_TRANSCODE_TYPES

CONSOLE = TEMPLATES.parent
# the kinds' own console pages and their modules (a processor's console.py)
KIND_TEMPLATES = sorted((CONSOLE.parent / "processors").glob("*/templates/*.html"))
KIND_CONSOLES = sorted((CONSOLE.parent / "processors").glob("*/console.py"))


def add(app: TestClient, key: str = "v.mp4") -> str:
    assert app.put(f"/api/files/input/{key}", content=b"\x00" * 64).status_code == 201
    r = app.post("/api/queue/add", json={"input_key": key, "transcode_types": ["thumbnail"]})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def service(app: TestClient) -> Any:
    return app.app.state.service  # type: ignore[attr-defined]


# -- language ----------------------------------------------------------------------------
def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    en, zh = catalogue("en"), catalogue("zh-CN")
    assert set(en) == set(zh), set(en) ^ set(zh)
    field = re.compile(r"{(\w*)}")
    for key in en:
        assert sorted(field.findall(en[key])) == sorted(field.findall(zh[key])), key
        assert zh[key].strip(), key


def _keys_used() -> tuple[set[str], set[str], set[str]]:
    """Literal keys passed to t(), t.n() (plural stems) and key prefixes built at run time."""
    sources = [p.read_text(encoding="utf-8") for p in [*TEMPLATES.rglob("*.html"), *KIND_TEMPLATES]]
    sources += [p.read_text(encoding="utf-8") for p in [*CONSOLE.glob("*.py"), *KIND_CONSOLES]]
    text = "\n".join(sources)
    plain = set(re.findall(r"\bt\(\s*['\"]([a-z_]+\.[a-z_.]+)['\"]", text))
    plural = set(re.findall(r"\bt\.n\(\s*['\"]([a-z_]+\.[a-z_.]+)['\"]", text))
    plural |= set(re.findall(r"\bt\.n\(\s*f['\"]([a-z_]+\.){", text))
    prefixes = set(re.findall(r"['\"]([a-z_]+\.)['\"]\s*(?:~|\+)", text))
    return plain, plural, prefixes


def test_every_key_the_console_uses_is_in_both_catalogues() -> None:
    plain, plural, prefixes = _keys_used()
    assert len(plain) > 100 and prefixes
    for lang in LANGS:
        cat = catalogue(lang)
        missing = [k for k in plain if k not in cat and not k.endswith(".")]
        assert missing == [], (lang, missing)
        for stem in plural:
            if stem.endswith("."):
                continue
            assert f"{stem}.other" in cat and f"{stem}.one" in cat, (lang, stem)
        for action in ("retry", "cancel"):  # t.n(f"bulk.{action}_done") and _skipped
            for suffix in ("_done", "_skipped"):
                assert f"bulk.{action}{suffix}.other" in cat
        # keys built from data: every value that exists today has a translation
        for s in TaskStatus:
            assert f"status.{s.value}" in cat
        for trig in Trigger:
            assert f"trigger.{trig.value}" in cat
        for name in ALL_TRANSCODE_TYPES:
            assert f"ttype.{name}" in cat and f"tdesc.{name}" in cat
        for phase in ("starting", "download", "probe", "transcode", "verify", "upload"):
            assert f"phase.{phase}" in cat
        task_codes = {c.code for c in _subclasses(ProcessorError)} | {ProcessorError.code}
        task_codes |= {"invalid_input", "lease_expired", "timeout", "dead_lettered"}
        for code in task_codes:  # a task's error_code: errcode.*
            assert f"errcode.{code}" in cat, code
        codes = {c.code for c in _subclasses(ConveyorError)} - {"lease_lost", "cancelled"}
        for code in codes - task_codes:  # errors a page shows
            assert f"errors.{code}" in cat, code
        for outcome in ("completed", "failed", "retry", "lease_expired", "cancelled", "released"):
            assert f"outcome.{outcome}" in cat


def _subclasses(cls: type) -> set[type]:
    """Every subclass in the package, whichever modules this test run imported."""
    import importlib
    import pkgutil

    import conveyor

    for mod in pkgutil.walk_packages(conveyor.__path__, "conveyor."):
        if mod.name not in sys.modules and not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    return _tree(cls)


def _tree(cls: type) -> set[type]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _tree(sub)
    return out


class _BareText(HTMLParser):
    """Collects text and human-facing attributes that did not come from the translator."""

    ATTRS = ("title", "placeholder", "aria-label", "alt", "label")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in self.ATTRS and value and re.search(r"[A-Za-z\u4e00-\u9fff]", value):
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and re.search(r"[A-Za-z\u4e00-\u9fff]", data):
            self.found.append(data.strip())


def test_every_template_string_goes_through_the_translator() -> None:
    jinja = re.compile(r"{#.*?#}|{%.*?%}|{{.*?}}", re.S)
    assert KIND_TEMPLATES  # the container kind's page
    for path in [*sorted(TEMPLATES.rglob("*.html")), *KIND_TEMPLATES]:
        parser = _BareText()
        parser.feed(jinja.sub("", path.read_text(encoding="utf-8")))
        assert parser.found == [], f"{path.name}: untranslated text {parser.found}"


def test_language_negotiation() -> None:
    assert negotiate(None, None) == "en"
    assert negotiate(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert negotiate(None, "zh-TW") == "zh-CN"
    assert negotiate(None, "fr-FR,en-GB;q=0.7,zh;q=0.5") == "en"
    assert negotiate(None, "fr-FR,zh;q=0.5,en;q=0.3") == "zh-CN"
    assert negotiate(None, "de") == "en"
    assert negotiate("zh-CN", "en-US") == "zh-CN"  # the switch wins over the browser
    assert negotiate("klingon", "zh-CN") == "zh-CN"


def test_durations_read_naturally_in_both_languages() -> None:
    en, zh = Translator("en"), Translator("zh-CN")
    assert en.duration(0.25) == "250 ms"
    assert en.duration(3.04) == "3.0 s"
    assert en.duration(42.4) == "42 s"
    assert en.duration(125) == "2 min 05 s"
    assert en.duration(7380) == "2 h 03 min"
    assert en.duration(90000) == "1 d 1 h"
    assert zh.duration(125) == "2 分 05 秒"
    assert zh.duration(7380) == "2 小时 03 分"
    assert en.duration(None) == "–"
    assert en.n("queue.cleared", 1) == "1 waiting task cancelled."
    assert en.n("queue.cleared", 1200) == "1,200 waiting tasks cancelled."
    assert zh.n("queue.cleared", 3) == "已取消 3 个等待中的任务。"
    assert en.size(1536) == "1.5 KB"


# -- pages ---------------------------------------------------------------------------------
PAGES = [
    "/admin",
    "/admin/tasks",
    "/admin/tasks?status=pending",
    "/admin/queue",
    "/admin/tasks/new",
]


@pytest.mark.parametrize("lang", ["en-US,en;q=0.9", "zh-CN,zh;q=0.9"])
def test_every_page_renders_in_both_languages(app: TestClient, lang: str) -> None:
    task_id = add(app)
    for url in [*PAGES, f"/admin/tasks/{task_id}", "/admin/queue/clear"]:
        r = app.get(url, headers={"accept-language": lang})
        assert r.status_code == 200, (url, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        want = "zh-CN" if lang.startswith("zh") else "en"
        assert f'<html lang="{want}">' in r.text
        assert "http://" not in r.text.replace("http://testserver", "") and "https://" not in r.text
        assert 'sse-connect="/admin/events?view=' in r.text
    zh = app.get("/admin", headers={"accept-language": "zh-CN"}).text
    assert "仪表盘" in zh and "Dashboard" not in zh


def test_a_pending_task_says_why_it_waits_in_the_api_and_on_its_page(app: TestClient) -> None:
    r = app.post(
        "/api/queue/add", json={"kind": "container", "params": {"command": ["true"], "gpus": 2}}
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    body = app.get(f"/api/tasks/{task_id}").json()
    assert (body["gpus"], body["waiting_reason"]) == (2, "no live worker runs container tasks")

    # what a worker reports on its heartbeat: 4 GPUs, 3 asked for by its running tasks
    gpu_host = WorkerInfo(id="gpu-host", kinds=["container"], gpus=4, gpus_in_use=3)
    service(app).backend.heartbeat(gpu_host, [], 60.0)
    body = app.get(f"/api/tasks/{task_id}").json()
    assert body["waiting_reason"] == "needs 2 GPUs; largest free worker has 1"
    page = f"/admin/tasks/{task_id}"
    en = app.get(page, headers={"accept-language": "en"}).text
    assert "Waiting: needs 2 GPUs; the largest free worker has 1." in en
    zh = app.get(page, headers={"accept-language": "zh-CN"}).text
    assert "等待中：需要 2 块 GPU；空闲 GPU 最多的工作节点只有 1 块空闲。" in zh

    service(app).backend.heartbeat(gpu_host.model_copy(update={"gpus_in_use": 1}), [], 60.0)
    assert app.get(f"/api/tasks/{task_id}").json()["waiting_reason"] is None
    assert 'id="waiting-reason"' not in app.get(page).text


def test_errors_are_readable_pages_not_tracebacks(app: TestClient) -> None:
    r = app.get("/admin/tasks/no-such-task")
    assert r.status_code == 404 and "No such task" in r.text and "Traceback" not in r.text
    r = app.get("/admin/tasks?status=bogus")
    assert r.status_code == 400 and "unknown status" in r.text
    r = app.get("/admin/tasks?date=2024-02-31")
    assert r.status_code == 400 and "invalid date" in r.text
    r = app.get("/admin/nowhere", headers={"accept-language": "zh-CN"})
    assert r.status_code == 404 and "未找到" in r.text
    # htmx gets a fragment for the flash area, not a page
    r = app.post("/admin/tasks/nope/retry", headers={"hx-request": "true"})
    assert r.status_code == 404 and r.headers["hx-retarget"] == "#flash"
    assert r.text.lstrip().startswith('<div class="flash error"') and "<html" not in r.text
    # the JSON API is untouched by the console's error pages
    assert app.get("/api/tasks/nope").json()["error"]["code"] == "task_not_found"


def test_submit_form_and_validation(app: TestClient) -> None:
    assert app.put("/api/files/input/clip.mp4", content=b"\x00" * 64).status_code == 201
    r = app.post(
        "/admin/tasks/new",
        data={"bucket": "input", "key": "clip.mp4", "transcode_types": ["thumbnail"]},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/tasks/")
    task = service(app).get(r.headers["location"].rsplit("/", 1)[1])
    assert task.trigger == Trigger.CONSOLE and task.params["transcode_types"] == ["thumbnail"]
    page = app.get(r.headers["location"])  # the flash rides on a cookie, once
    assert "Task queued." in page.text
    assert "Task queued." not in app.get(r.headers["location"]).text
    # nothing ticked, a missing object, a bad priority: the form comes back with the reason
    for data, status, text in (
        ({"bucket": "input", "key": "clip.mp4"}, 400, "transcode_types is empty"),
        ({"bucket": "input", "key": "nope.mp4", "transcode_types": "thumbnail"}, 404, "not found"),
        (
            {"bucket": "input", "key": "clip.mp4", "transcode_types": "thumbnail", "priority": "x"},
            400,
            "Priority must be a whole number",
        ),
        (
            {
                "bucket": "input",
                "key": "clip.mp4",
                "transcode_types": "thumbnail",
                "priority": "500",
            },
            400,
            "Priority must be a whole number",
        ),
    ):
        r = app.post("/admin/tasks/new", data=data)
        assert r.status_code == status and text in r.text, (data, r.status_code)
        assert 'value="clip.mp4"' in r.text or 'value="nope.mp4"' in r.text  # input kept


def test_bulk_actions_with_and_without_htmx(app: TestClient) -> None:
    ids = [add(app, f"b{i}.mp4") for i in range(3)]
    r = app.post(
        "/admin/tasks/bulk",
        data={"ids": ids[:2], "action": "cancel", "next": "/admin/tasks?status=pending"},
        headers={"hx-request": "true"},
    )
    assert r.status_code == 200 and "Cancelled 2 tasks" in r.text
    for task_id in ids[:2]:
        assert f'hx-swap-oob="innerHTML:#row-state-{task_id}"' in r.text
    # a refused one is reported, the rest done; without htmx: 303 back with a flash
    r = app.post(
        "/admin/tasks/bulk",
        data={"ids": ids, "action": "cancel", "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/tasks"
    page = app.get("/admin/tasks")
    assert "Cancelled 1 task" in page.text and "2 tasks could not be cancelled" in page.text
    r = app.post("/admin/tasks/bulk", data={"action": "retry"}, headers={"hx-request": "true"})
    assert "Select one or more tasks first." in r.text
    result = service(app).bulk_retry(ids)
    assert len(result.done) == 3 and result.errors == []


def test_clear_queue_confirmation_counts(app: TestClient) -> None:
    for i in range(4):
        add(app, f"c{i}.mp4")
    r = app.get("/admin/queue/clear", headers={"hx-request": "true"})
    assert "This will cancel 4 waiting tasks" in r.text and "Cancel 4 tasks" in r.text
    r = app.post("/admin/queue/clear", headers={"hx-request": "true"})
    assert (
        "4 waiting tasks cancelled." in r.text and 'hx-swap-oob="innerHTML:#queue-panel"' in r.text
    )
    r = app.get("/admin/queue/clear", headers={"hx-request": "true"})
    assert "nothing to cancel" in r.text


def test_language_switch_sets_a_cookie_and_stays_in_the_console(app: TestClient) -> None:
    r = app.get("/admin/lang?set=zh-CN&next=/admin/queue", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/queue"
    assert "lang=zh-CN" in r.headers["set-cookie"]
    assert "队列" in app.get("/admin/queue").text
    for bad in ("//evil.example/x", "https://evil.example", "/api/tasks"):
        r = app.get(f"/admin/lang?set=en&next={bad}", follow_redirects=False)
        assert r.headers["location"] == "/admin"


# -- the event stream -------------------------------------------------------------------------
def _events(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in text.split("\n\n"):
        name = next((ln[7:] for ln in block.splitlines() if ln.startswith("event: ")), None)
        if name:
            out[name] = "\n".join(ln[6:] for ln in block.splitlines() if ln.startswith("data: "))
    return out


def test_event_stream_sends_named_fragments(app: TestClient) -> None:
    task_id = add(app)
    ev = _events(app.get("/admin/events?view=dashboard&once=1").text)
    assert {"nav", "stats", "workers", "recent", "chart", "chart-summary"} <= set(ev)
    assert task_id in ev["recent"]
    assert json.loads(ev["chart"].replace("&#34;", '"'))["t"]
    ev = _events(app.get(f"/admin/events?view=tasks&watch={task_id},missing&once=1").text)
    assert f"row-{task_id}" in ev and 'data-status="pending"' in ev[f"row-{task_id}"]
    ev = _events(app.get("/admin/events?view=queue&once=1", headers={"accept-language": "zh"}).text)
    assert "等待中" in ev["queue"]
    r = app.get("/admin/events?view=nav&once=1")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith("retry: ")


def test_task_stream_skips_what_the_page_already_shows_and_follows_the_log(
    app: TestClient,
) -> None:
    task_id = add(app)
    svc = service(app)
    page = app.get(f"/admin/tasks/{task_id}").text
    url = re.search(r'sse-connect="([^"]+)"', page).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    ev = _events(app.get(url + "&once=1").text)
    assert "task-head" not in ev and "log" not in ev  # nothing changed since the page
    now = datetime.now(UTC)
    svc.backend.append_logs(task_id, 1, [(now, "worker", "hello <b>log</b>")])
    svc.cancel(task_id)
    ev = _events(app.get(url + "&once=1").text)
    assert 'data-status="cancelled"' in ev["task-head"]
    assert "hello &lt;b&gt;log&lt;/b&gt;" in ev["log"] and "attempt 1" in ev["log"]
    seq = svc.logs(task_id)[-1].seq
    ev = _events(app.get(url + "&once=1", headers={"last-event-id": str(seq)}).text)
    assert "log" not in ev  # a reconnecting browser already has that line


def test_task_page_plays_a_streaming_group_and_lists_it_by_its_entry_points(
    app: TestClient,
) -> None:
    """A completed task with an HLS group: the page carries the player (the master playlist
    through the API's download path, the vendored hls.js and its worker), the group's
    segments and variant playlists are counted on its entry point's row, not listed."""
    svc = service(app)
    task_id = add(app, "talks/keynote.mp4")
    pending = app.get(f"/admin/tasks/{task_id}").text
    assert 'id="stream-player"' not in pending and "player.js" in pending

    def out(name: str, role: str, size: int, ctype: str, **meta: Any) -> OutputFile:
        return OutputFile(
            name=name,
            bucket="output",
            key=f"talks/keynote/{name}",
            size=size,
            content_type=ctype,
            meta={"role": role, "group": name.split("/")[0], **meta},
        )

    m3u8, ts = "application/vnd.apple.mpegurl", "video/mp2t"
    renditions = [{"name": "720p", "codec": "h264"}, {"name": "audio", "codec": "aac"}]
    outputs = [
        out("hls/master.m3u8", "master", 300, m3u8, kind="hls", renditions=renditions),
        out("hls/720p/index.m3u8", "playlist", 200, m3u8, rendition="720p"),
        out("hls/720p/seg_00000.ts", "segment", 5000, ts, rendition="720p"),
        out("hls/audio/seg_00000.ts", "segment", 500, ts, rendition="audio"),
    ]
    (claimed,) = svc.backend.claim("w", ["transcode"], 1, 60)
    svc.backend.complete(claimed.lease, outputs)
    html = app.get(f"/admin/tasks/{task_id}").text
    player = re.search(r'<figure class="player" id="stream-player"[^>]*>', html)
    assert player, html
    tag = player.group(0)
    assert 'data-src="/api/files/output/talks/keynote/hls/master.m3u8"' in tag
    assert "/admin/static/vendor/hls.min.js?v=" in tag
    assert "/admin/static/vendor/hls.worker.js?v=" in tag
    assert 'id="rendition"' in html and ">Auto<" in html
    # the group: one row (its entry point) with its files counted, not 4 rows
    rows = re.findall(r'<tr data-output="([^"]+)">', html)
    assert rows == ["hls/master.m3u8"], rows
    assert "4 files" in html and "HLS · 720p, audio" in html
    zh = app.get(f"/admin/tasks/{task_id}", cookies={"lang": "zh-CN"}).text
    assert "清晰度" in zh and ">自动<" in zh and "4 个文件" in zh


# -- service and backend additions --------------------------------------------------------------
def _finished(backend: SQLiteBackend, n_ok: int, n_bad: int) -> None:
    tasks = [Task(input=InputRef(bucket="i", key=f"k{i}.mp4")) for i in range(n_ok + n_bad)]
    for t in tasks:
        backend.submit(t)
    claimed = backend.claim("w", ["transcode"], len(tasks), 60)
    for i, c in enumerate(claimed):
        if i < n_ok:
            backend.complete(c.lease, [])
        else:
            backend.fail(c.lease, "boom", retryable=False)


def test_throughput_sqlite_query_matches_the_default(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "t.db")
    try:
        _finished(backend, 5, 2)
        since = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        fast = backend.throughput(since, 3600)
        slow = Backend.throughput(backend, since, 3600)
        assert fast == slow
        assert len(fast) == 4 and fast[0].start == since
        assert (fast[-1].completed, fast[-1].failed) == (5, 2)
        assert sum(p.completed + p.failed for p in fast[:-1]) == 0
    finally:
        backend.close()


def test_service_throughput_covers_24_whole_hours(app: TestClient) -> None:
    points = service(app).throughput(24, 3600)
    assert len(points) == 24
    assert points[-1].start <= datetime.now(UTC) < points[-1].start + timedelta(hours=1)
    assert all(p.start.minute == 0 and p.start.second == 0 for p in points)


def test_list_text_filter_matches_a_substring_of_the_key(app: TestClient) -> None:
    for key in ("clips/a_1.mp4", "clips/a%1.mp4", "CLIPS/b.mov", "other/c.mp4"):
        add(app, key)
    svc = service(app)

    def keys(text: str, **kw: Any) -> list[str]:
        return sorted(t.input.key for t in svc.list(text=text, limit=50, **kw).items)

    assert keys("clips/") == ["CLIPS/b.mov", "clips/a%1.mp4", "clips/a_1.mp4"]
    assert keys("%") == ["clips/a%1.mp4"]
    assert keys("a_1") == ["clips/a_1.mp4"]
    assert keys(".mov", status="pending") == ["CLIPS/b.mov"]
    assert keys("nothing") == []
    assert len(svc.list(text="  ", limit=50).items) == 4  # blank means no filter


def test_sqlite_status_filter_plan_uses_the_index(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "p.db")
    try:
        seen: list[str] = []
        reader = backend._reader()
        reader.set_trace_callback(seen.append)
        backend.list(status=TaskStatus.FAILED, text="x", limit=5)
        reader.set_trace_callback(None)
        plan = " ".join(str(r[3]) for r in reader.execute("EXPLAIN QUERY PLAN " + seen[-1]))
        assert "tasks_status" in plan, plan
    finally:
        backend.close()


# -- assets ---------------------------------------------------------------------------------------
def test_vendored_assets_match_versions_md(app: TestClient) -> None:
    vendor = STATIC / "vendor"
    table = (vendor / "VERSIONS.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| (\S+) \| ([\d.]+) \| (\S+) \| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$",
        table,
        re.M,
    )
    assert {r[3] for r in rows} == {p.name for p in vendor.iterdir() if p.suffix in (".js", ".css")}
    for _package, _version, _licence, name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
        r = app.get(f"/admin/static/vendor/{name}")
        assert r.status_code == 200 and r.content == (vendor / name).read_bytes()
    for own in ("console.js", "console.css"):
        text = (STATIC / own).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, own


def test_console_files_are_package_data() -> None:
    """pyproject's package-data globs cover every file the console ships."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["conveyor"]
    pkg = CONSOLE.parent
    files = [p for p in CONSOLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files = [p for p in files if p.suffix != ".py"]
    assert files
    for p in files:
        rel = p.relative_to(pkg).as_posix()
        assert any(Path(rel).match(g) or _glob(rel, g) for g in globs), rel


def _glob(rel: str, pattern: str) -> bool:
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, rel) is not None


def test_stream_ends_promptly_when_the_server_stops(app: TestClient) -> None:
    state = app.app.state.console  # type: ignore[attr-defined]
    state.closing.set()
    t0 = time.monotonic()
    r = app.get("/admin/events?view=dashboard")  # would stream forever if not stopping
    assert time.monotonic() - t0 < 5 and r.status_code == 200
    state.closing.clear()


# -- the same console-facing backend semantics on every engine ----------------------------------
@pytest.fixture(params=["sqlite", "postgres", "aws"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each engine of the contract suite (skips, or fails under CI, where one cannot start)."""
    from tests.contract.conftest import BACKEND_ENGINES

    backend = BACKEND_ENGINES[request.param](tmp_path)()
    try:
        yield backend
    finally:
        backend.close()


def test_text_filter_and_throughput_on_every_engine(engine: Backend) -> None:
    for key in ("clips/a_1.mp4", "clips/a%1.mp4", "CLIPS/b.mov", "other/c.mp4"):
        engine.submit(Task(input=InputRef(bucket="input", key=key)))

    def keys(text: str, **kw: Any) -> list[str]:
        return sorted(t.input.key for t in engine.list(text=text, limit=50, **kw).items)  # type: ignore[union-attr]

    assert keys("clips/") == ["CLIPS/b.mov", "clips/a%1.mp4", "clips/a_1.mp4"]
    assert keys("%") == ["clips/a%1.mp4"]
    assert keys("a_1") == ["clips/a_1.mp4"]
    assert keys(".MOV", status=TaskStatus.PENDING) == ["CLIPS/b.mov"]
    page = engine.list(text="clips", limit=2)
    rest = engine.list(text="clips", limit=2, cursor=page.next_cursor)
    assert len(page.items) == 2 and len(rest.items) == 1 and rest.next_cursor is None

    claimed = engine.claim("w", ["transcode"], 3, 60)
    assert len(claimed) == 3
    engine.complete(claimed[0].lease, [])
    engine.complete(claimed[1].lease, [])
    engine.fail(claimed[2].lease, "boom", retryable=False)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    points = engine.throughput(hour - timedelta(hours=2), 3600)
    assert [p.start for p in points] == [hour - timedelta(hours=h) for h in (2, 1, 0)]
    assert [(p.completed, p.failed) for p in points] == [(0, 0), (0, 0), (2, 1)]
