"""End to end, issue 18's first show-point: a real `conveyor up` with auth on, a generated
60 s 1280x720 clip with audio, one task (a submitter's) asking for the `hls` and `dash`
groups, every file fetched back through the API and checked from the outside with ffprobe:

* ffprobe opens master.m3u8, manifest.mpd and every variant (each HLS playlist, each DASH
  representation);
* no rung is larger than the input: 1080p is dropped, 720p kept at 1280x720, and the
  master playlist and the manifest list exactly what is there;
* every variant's keyframes fall at the same timestamps (every 4 s);
* every segment lasts at most the target plus one frame;
* every variant lasts the input's length within one frame;

then the API's download path and the console's player on the same task:

* every file is served with the content type its output records (.m3u8, .mpd, .ts,
  init and media .m4s), a segment's ``Range: bytes=0-99`` answers 206 with 100 bytes,
  and another submitter (or nobody) cannot read them;
* the console's task page, in headless Chromium (Debian's, which plays H.264 and AAC
  through MediaSource: checked first), logged in as the submitter, plays the HLS output
  with the vendored hls.js under the page's strict CSP: the video's ``currentTime``
  passes 1 s, the rendition picker lists auto and every rung (720p to 234p), and picking
  a rung plays it; in English and in Simplified Chinese.

The groups run with the built-in ladders, segment length and muxers, at x264 preset
``ultrafast`` (set through ``CONVEYOR_TRANSCODE_PROFILES``, which also shows a config
override of a built-in group reaching a real server): what is checked is the packaging
(rungs, keyframes, segments, durations, playback), which the preset does not change, and
two shared cores finish both ladders in well under a minute.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, IN_CI, Server, launch, make_clip, need_tool, wait_task
from tests.e2e.console_helpers import CHROMIUM, CHROMIUM_ARGS, Tab, need_browser, open_tab, wait_for
from tests.integration.transcode import streams as st

SEG = 4.0
FPS = 25
FRAME = 1 / FPS
SECONDS = 60.0
FAST_GROUPS = {"hls": {"preset": "ultrafast"}, "dash": {"preset": "ultrafast"}}
OWNER = "talks"  # the submitter whose task it is: its files live under talks/
PREFIX = f"{OWNER}/streams/talk"
RUNGS = [(1280, 720), (960, 540), (640, 360), (416, 234)]
H264_AAC = 'video/mp4; codecs="avc1.42E01E,mp4a.40.2"'


@dataclass
class Streamed:
    server: Server
    tokens: dict[str, str]  # admin, talks (the submitter), other (another submitter)
    task: dict[str, Any]
    elapsed: float

    def client(self, who: str | None = OWNER) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def clip_60s(clips_dir: Path) -> Path:
    return make_clip(clips_dir / "talk60.mp4", width=1280, height=720, seconds=SECONDS, rate=FPS)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory, clip_60s: Path) -> Iterator[Streamed]:
    """`conveyor up` with auth on; the submitter ``talks`` uploads the clip and asks for
    the hls and dash groups; the completed task."""
    need_tool("ffmpeg", "ffprobe")
    env = {
        **FAST_ENV,
        "CONVEYOR_TRANSCODE_PROFILES": json.dumps(FAST_GROUPS),
        "CONVEYOR_AUTH": "on",
        "CONVEYOR_TRIGGER_ENABLED": "false",
    }
    srv = launch(tmp_path_factory.mktemp("streaming"), "up", env=env)
    try:
        found = wait_for(
            lambda: re.search(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b", srv.log_text()),
            timeout=10,
            what="the first admin token in the server's output",
        )
        tokens = {"admin": found.group(1)}
        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {tokens['admin']}"}
        ) as c:
            for name, key in ((OWNER, OWNER), ("someone-else", "other")):
                r = c.post("/api/tokens", json={"name": name, "role": "submitter"})
                assert r.status_code == 201, r.text
                tokens[key] = r.json()["token"]
        probe = Streamed(server=srv, tokens=tokens, task={}, elapsed=0.0)
        with probe.client() as c:
            r = c.put(f"/api/files/input/{PREFIX}.mp4", content=clip_60s.read_bytes())
            assert r.status_code == 201, r.text
            started = time.monotonic()
            r = c.post(
                "/api/queue/add",
                json={"input_key": f"{PREFIX}.mp4", "transcode_types": ["hls", "dash"]},
            )
            assert r.status_code == 201, r.text
            task = wait_task(c, r.json()["task_id"], timeout=840)
        yield Streamed(server=srv, tokens=tokens, task=task, elapsed=time.monotonic() - started)
    finally:
        srv.stop()


def fetch(c: httpx.Client, outputs: list[dict[str, Any]], dest: Path) -> dict[str, str]:
    """Every output through the API's download path into ``dest/<key>``; the content
    type each was served with."""
    served = {}
    for o in outputs:
        r = c.get(f"/api/files/{o['bucket']}/{o['key']}")
        assert r.status_code == 200, (o["key"], r.text)
        path = dest / o["key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(r.content)
        assert path.stat().st_size == o["size"], o["key"]
        served[o["key"]] = r.headers.get("content-type", "")
    return served


@pytest.mark.timeout(900)
def test_hls_and_dash_ladders_from_a_60s_720p_clip(
    streamed: Streamed, clip_60s: Path, tmp_path: Path
) -> None:
    source = st.duration(clip_60s)
    task, elapsed = streamed.task, streamed.elapsed
    assert task["status"] == "completed", task
    assert task["attempts"] == 1
    outputs: list[dict[str, Any]] = task["outputs"]
    by_name = {o["name"]: o for o in outputs}
    assert all(o["key"].startswith((f"{PREFIX}/hls/", f"{PREFIX}/dash/")) for o in outputs)
    # what the task says it published, per file: the content types
    declared: dict[str, set[str]] = {Path(o["key"]).suffix: set() for o in outputs}
    for o in outputs:
        declared[Path(o["key"]).suffix].add(o["content_type"])
    assert declared[".m3u8"] == {"application/vnd.apple.mpegurl"}
    assert declared[".mpd"] == {"application/dash+xml"}
    assert declared[".ts"] == {"video/mp2t"}
    assert declared[".m4s"] == {"video/mp4", "video/iso.segment"}  # init, media

    root = tmp_path / "fetched"
    with streamed.client() as c:
        served = fetch(c, outputs, root)
    # and the API serves each with the type its output records
    assert {o["key"]: o["content_type"] for o in outputs} == served
    talk = root / PREFIX
    hls, dash = talk / "hls", talk / "dash"

    # -- what is there: 1080p is above the input, everything else is, and nothing larger
    planned = RUNGS
    for entry in ("hls/master.m3u8", "dash/manifest.mpd"):
        meta = by_name[entry]["meta"]
        assert meta["dropped"] == ["1080p"], meta
        assert [r["name"] for r in meta["renditions"]] == ["720p", "540p", "360p", "234p", "audio"]
    variants, media = st.master_variants(hls / "master.m3u8")
    assert [v.attrs["RESOLUTION"] for v in variants] == [f"{w}x{h}" for w, h in planned]
    assert media == ["audio/index.m3u8"]
    assert st.mpd_sizes(dash / "manifest.mpd") == planned

    # -- ffprobe opens the entry points and every variant
    master_streams = st.streams(hls / "master.m3u8")
    manifest_streams = st.streams(dash / "manifest.mpd")
    for found in (master_streams, manifest_streams):
        pictures = {(s["width"], s["height"]) for s in found if s["codec_type"] == "video"}
        assert pictures == set(planned), pictures
        assert all(w <= 1280 and h <= 720 for w, h in pictures), "no rung above the input"
        assert {s["codec_name"] for s in found if s["codec_type"] == "audio"} == {"aac"}
    playlists = [hls / v.uri for v in variants] + [hls / "audio" / "index.m3u8"]
    for playlist, want in zip(playlists, [*planned, None], strict=True):
        (s,) = st.streams(playlist)
        if want is None:
            assert s["codec_name"] == "aac"
        else:
            assert (s["codec_name"], s["width"], s["height"]) == ("h264", *want), playlist

    # -- keyframes: the same instants on every rung of both groups, one per segment
    every_segment = [round(SEG * i, 3) for i in range(int(SECONDS // SEG))]
    hls_keys = [st.keyframes(p) for p in playlists[:-1]]
    assert all(k == hls_keys[0] for k in hls_keys), "HLS variants' keyframes differ"
    dash_keys = [st.keyframes(dash / "manifest.mpd", f"v:{k}") for k in range(len(planned))]
    assert all(k == dash_keys[0] for k in dash_keys), "DASH representations' keyframes differ"
    assert st.relative(hls_keys[0]) == every_segment == st.relative(dash_keys[0])

    # -- segment lengths: at most the target plus one frame, audio included
    longest = {p.relative_to(hls).as_posix(): max(st.extinf(p)) for p in playlists}
    rep_durations = st.mpd_segment_durations(dash / "manifest.mpd")
    longest |= {f"dash rep {rep}": max(d) for rep, d in rep_durations.items()}
    assert max(longest.values()) <= SEG + FRAME + 1e-6, longest
    assert by_name["hls/master.m3u8"]["meta"]["longest_segment"] <= SEG + FRAME

    # -- lengths: every variant the input's, within one frame
    lengths = {p.relative_to(hls).as_posix(): st.duration(p) for p in playlists}
    lengths["master.m3u8"] = st.duration(hls / "master.m3u8")
    lengths |= {f"dash rep {rep}": v for rep, v in st.mpd_durations(dash / "manifest.mpd").items()}
    off = {k: round(abs(v - source), 4) for k, v in lengths.items()}
    assert max(off.values()) <= FRAME, off

    counts = {g: sum(1 for o in outputs if o["name"].startswith(f"{g}/")) for g in ("hls", "dash")}
    print(
        f"\nstreaming e2e: {source:.3f} s 1280x720 in, task completed in {elapsed:.1f} s; "
        f"files hls={counts['hls']} dash={counts['dash']}; rungs "
        f"{', '.join(f'{w}x{h}' for w, h in planned)} + AAC (1080p dropped)\n"
        f"  keyframes every {SEG:g} s on all {len(hls_keys) + len(dash_keys)} video variants "
        f"({len(hls_keys[0])} each); longest segment {max(longest.values()):.4f} s "
        f"(limit {SEG + FRAME:.2f}); largest length error {max(off.values()):.4f} s "
        f"(limit {FRAME:.2f})\n"
        f"  served by the API as: "
        + ", ".join(sorted({f"{Path(k).suffix}={v}" for k, v in served.items()}))
    )


def _one(outputs: list[dict[str, Any]], role: str, suffix: str) -> dict[str, Any]:
    return next(o for o in outputs if o["meta"].get("role") == role and o["key"].endswith(suffix))


@pytest.mark.timeout(900)
def test_download_path_serves_the_stream(streamed: Streamed) -> None:
    """Playlists, manifests and segments with their recorded types; ``Range`` on segments;
    the submitter's files only."""
    outputs = streamed.task["outputs"]
    picks = {
        "master.m3u8": _one(outputs, "master", "master.m3u8"),
        "variant .m3u8": _one(outputs, "playlist", "/index.m3u8"),
        ".mpd": _one(outputs, "manifest", ".mpd"),
        ".ts": _one(outputs, "segment", ".ts"),
        "init .m4s": _one(outputs, "init", ".m4s"),
        "media .m4s": _one(outputs, "segment", ".m4s"),
    }
    want = {
        "master.m3u8": "application/vnd.apple.mpegurl",
        "variant .m3u8": "application/vnd.apple.mpegurl",
        ".mpd": "application/dash+xml",
        ".ts": "video/mp2t",
        "init .m4s": "video/mp4",
        "media .m4s": "video/iso.segment",
    }
    seen: list[str] = []
    with streamed.client() as c:
        for what, o in picks.items():
            url = f"/api/files/{o['bucket']}/{o['key']}"
            r = c.get(url)
            assert r.status_code == 200, (what, r.text)
            assert r.headers["content-type"] == want[what] == o["content_type"], what
            if what in (".ts", "init .m4s", "media .m4s"):
                part = c.get(url, headers={"Range": "bytes=0-99"})
                assert part.status_code == 206, (what, part.status_code)
                assert len(part.content) == 100 and part.content == r.content[:100], what
                assert part.headers["content-range"] == f"bytes 0-99/{o['size']}", what
                assert part.headers["content-type"] == want[what], what
                seen.append(f"{what} {want[what]} Range 0-99 -> 206, {len(part.content)} bytes")
            else:
                seen.append(f"{what} {want[what]}")
    # file scoping as it was: another submitter and an anonymous caller read nothing
    segment = picks[".ts"]
    with streamed.client("other") as other:
        r = other.get(f"/api/files/{segment['bucket']}/{segment['key']}")
        assert r.status_code == 403, r.text
    with streamed.client(None) as nobody:
        assert nobody.get(f"/api/files/{segment['bucket']}/{segment['key']}").status_code == 401
    print("\nstreaming e2e, download path: " + "; ".join(seen))


# -- the console plays it --------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = need_browser()
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _login(tab: Tab, token: str, then: str) -> None:
    tab.go(then)
    tab.page.wait_for_selector("#login-form")  # sent to the login page first
    tab.page.fill("#login-token", token)
    tab.page.click("#login-submit")
    tab.page.wait_for_url(re.compile(re.escape(then) + "$"))


def _current_time(tab: Tab) -> float:
    return float(tab.page.evaluate("() => document.getElementById('stream-video').currentTime"))


def _play(tab: Tab, past: float, timeout: float = 60_000) -> float:
    """Play (muted: no user gesture in a test) until ``currentTime`` passes ``past``."""
    tab.page.evaluate(
        "() => { const v = document.getElementById('stream-video'); v.muted = true; v.play(); }"
    )
    tab.page.wait_for_function(
        f"() => document.getElementById('stream-video').currentTime > {past}", timeout=timeout
    )
    return _current_time(tab)


def _watch_files(tab: Tab) -> dict[str, set[tuple[int, str]]]:
    """Per suffix, the (status, content type) of every /api/files answer the page got."""
    got: dict[str, set[tuple[int, str]]] = {}

    def seen(response: Any) -> None:
        path = response.url.split("?")[0]
        if "/api/files/" in path:
            suffix = Path(path).suffix
            got.setdefault(suffix, set()).add(
                (response.status, response.headers.get("content-type", ""))
            )

    tab.page.on("response", seen)
    return got


@pytest.mark.timeout(900)
def test_console_plays_the_hls_output(browser: Any, streamed: Streamed) -> None:
    task = streamed.task
    assert task["status"] == "completed", task
    page_path = f"/admin/tasks/{task['id']}"
    with open_tab(browser, streamed.server.url) as tab:
        # can this Chromium play H.264 + AAC through MediaSource at all? (Debian's can;
        # a build without the proprietary codecs cannot, and then nothing here would)
        tab.go("/admin/login")
        codecs = {
            t: tab.page.evaluate(f"() => MediaSource.isTypeSupported('{t}')")
            for t in (
                H264_AAC,
                'video/mp4; codecs="vp09.00.10.08"',
                'video/mp4; codecs="av01.0.05M.08"',
            )
        }
        if not codecs[H264_AAC]:
            msg = f"this Chromium's MediaSource cannot play H.264/AAC: {codecs}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)

        files = _watch_files(tab)
        _login(tab, streamed.tokens[OWNER], page_path)
        response = tab.go(page_path)
        csp = dict(
            d.strip().split(" ", 1)
            for d in response.headers["content-security-policy"].split(";")
            if d.strip()
        )
        # strict as it was: scripts (and so workers, which fall back to script-src) from
        # this origin only; MediaSource's blob: URL is the one thing media-src needs
        assert csp["script-src"] == "'self'", csp
        assert "blob:" not in csp.get("worker-src", "") + csp.get("child-src", ""), csp
        assert "blob:" in csp["media-src"].split(), csp
        page = tab.page
        page.wait_for_selector("#stream-player[data-state='ready']", timeout=30_000)
        assert page.get_attribute("#stream-player", "data-src").endswith(
            f"/api/files/output/{PREFIX}/hls/master.m3u8"
        )
        # the picker: auto, then every rung the master playlist lists, largest first
        options = page.eval_on_selector_all(
            "#rendition option",
            "els => els.map(e => [e.value, e.textContent, e.getAttribute('data-height')])",
        )
        assert options[0][:2] == ["-1", "Auto"], options
        assert [int(o[2]) for o in options[1:]] == [h for _, h in RUNGS], options
        assert all(re.fullmatch(r"\d+p · [\d.]+ (M|k)bit/s", o[1]) for o in options[1:]), options

        reached = _play(tab, 1.0)
        playing = page.get_attribute("#stream-player", "data-level")
        auto_label = page.eval_on_selector("#rendition option[value='-1']", "e => e.textContent")
        assert playing and auto_label == f"Auto ({playing}p)", (playing, auto_label)

        # pick the smallest rung: hls.js switches to it and the video keeps playing
        smallest = next(o for o in options if o[2] == "234")
        page.select_option("#rendition", smallest[0])
        wait_for(lambda: page.get_attribute("#stream-player", "data-level") == "234", timeout=30)
        after_switch = _current_time(tab)
        later = _play(tab, after_switch + 1.0)
        tab.shot("task-stream-en", full_page=False)

        # the transmuxer worker came from the vendored file, not a blob: URL
        assert any("/admin/static/vendor/hls.worker.js" in u for u in tab.requests)
        assert not any(u.startswith("blob:") and "worker" in u for u in tab.requests)
        # what the player was served: every /api/files answer 200 with the stream's types
        assert files[".m3u8"] == {(200, "application/vnd.apple.mpegurl")}, files
        assert files[".ts"] == {(200, "video/mp2t")}, files

    # and in Simplified Chinese
    with open_tab(browser, streamed.server.url, locale="zh-CN") as tab:
        _login(tab, streamed.tokens[OWNER], page_path)
        tab.page.wait_for_selector("#stream-player[data-state='ready']", timeout=30_000)
        zh_options = tab.page.eval_on_selector_all(
            "#rendition option", "els => els.map(e => e.textContent)"
        )
        assert zh_options[0] == "自动" and len(zh_options) == 1 + len(RUNGS), zh_options
        caption = tab.page.text_content("#stream-player figcaption") or ""
        assert "流媒体" in caption and "清晰度" in caption, caption
        zh_reached = _play(tab, 1.0)
        zh_auto = tab.page.eval_on_selector("#rendition option[value='-1']", "e => e.textContent")
        assert zh_auto.startswith("自动（"), zh_auto
        tab.shot("task-stream-zh", full_page=False)

    print(
        f"\nstreaming e2e, console: MediaSource.isTypeSupported {codecs}\n"
        f"  en: currentTime {reached:.2f} s on the {playing}p rung (auto), picker "
        f"{[o[1] for o in options]}; 234p picked: currentTime {after_switch:.2f} -> {later:.2f} s\n"
        f"  zh-CN: currentTime {zh_reached:.2f} s, picker {zh_options}\n"
        f"  the player was served: "
        + ", ".join(f"{k} {sorted(v)}" for k, v in sorted(files.items()))
    )
