"""Split and stitch through the worker (issue 18): a transcode task split into chunk
tasks, each encoded by the worker's pool, then stitched by the task's second run.  Real
ffmpeg, real SQLite, real local storage, the real worker and transcode processor."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings, load_settings
from conveyor.models import InputRef, Task, TaskStatus
from conveyor.processors.transcode import TranscodeProcessor
from conveyor.storage.local import LocalBlobStore
from tests.integration.conftest import final_task, worker_on_sqlite
from tests.integration.transcode.conftest import make_clip

SECONDS = 20.0  # 500 frames; keyframes every 2 s; 5 s chunks -> cuts at 6 s and 12 s


def packets(path: Path) -> int:
    argv = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets"]
    argv += ["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)]
    out = subprocess.run(
        argv,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip().strip(","))


def silences(path: Path) -> list[str]:
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a"]
    argv += ["-af", "silencedetect=noise=-50dB:d=0.02", "-f", "null", "-"]
    err = subprocess.run(argv, check=True, capture_output=True, text=True).stderr
    return re.findall(r"silence_start: ([0-9.]+)", err)


def audio_seconds(path: Path) -> float:
    argv = ["ffprobe", "-v", "error", "-select_streams", "a:0"]
    argv += ["-show_entries", "stream=duration", "-of", "csv=p=0", str(path)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return float(out.strip().strip(","))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    return load_settings(
        data_dir=tmp_path,
        heartbeat_interval=0.2,
        lease_seconds=10.0,
        reap_interval=0.5,
        poll_interval=0.1,
        shutdown_grace=1.0,
        transcode_chunk_seconds=5,
        transcode_encoder="cpu",
    )


@pytest.fixture
def running(settings: Settings) -> Iterator[tuple[SQLiteBackend, LocalBlobStore]]:
    with worker_on_sqlite(
        settings, {"transcode": TranscodeProcessor(settings)}, grace=2.0
    ) as running:
        yield running


def _final(backend: SQLiteBackend, task_id: str) -> Task:
    return final_task(backend, task_id, timeout=240, poll=0.1)


def test_split_task_is_chunked_then_stitched(
    running: tuple[SQLiteBackend, LocalBlobStore], settings: Settings, tmp_path: Path
) -> None:
    backend, store = running
    src = make_clip(
        tmp_path / "src.mp4", width=320, height=180, seconds=SECONDS, extra=["-g", "50"]
    )
    store.put_file("input", "clips/long.mp4", src)
    types = ["mp4_standard", "mp4_smooth", "custom_mute_preview", "thumbnail"]
    parent, _ = backend.submit(
        Task(
            kind="transcode",
            input=InputRef(bucket="input", key="clips/long.mp4"),
            params={"transcode_types": types, "split": True},
        )
    )
    done = _final(backend, parent.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.children == 4  # 3 video chunks and the audio part
    assert [a.outcome for a in done.history] == ["spawned", "completed"]
    kids = backend.children(parent.id)
    assert [k.status for k in kids] == [TaskStatus.COMPLETED] * 4
    assert kids[0].params["audio_part"] is True
    chunks = kids[1:]
    assert [k.params["chunk"]["index"] for k in chunks] == [0, 1, 2]
    assert sum(k.params["chunk"]["frames"] for k in chunks) == round(SECONDS * 25)
    by_name = {o.name: o for o in done.outputs}
    assert set(by_name) == set(types)
    for name in ("mp4_standard", "mp4_smooth"):
        got = store.get_file(by_name[name].bucket, by_name[name].key, tmp_path / f"{name}.mp4")
        assert packets(got) == round(SECONDS * 25), name
        assert by_name[name].meta["chunks"] == 3
        assert by_name[name].meta["audio"] == "aac"
        assert silences(got) == [], f"{name}: an audio gap"
        assert audio_seconds(got) == pytest.approx(SECONDS, abs=0.05)
    # the chunk files were intermediate: removed once the stitched outputs were staged
    for k in kids:
        for o in k.outputs:
            assert not store.exists(o.bucket, o.key), o.key
    logs = [ln.line for ln in backend.read_logs(parent.id)]
    assert any(ln.startswith("Split: params.split is true") for ln in logs), logs


def test_split_false_encodes_whole(
    running: tuple[SQLiteBackend, LocalBlobStore], tmp_path: Path
) -> None:
    backend, store = running
    src = make_clip(tmp_path / "src.mp4", width=320, height=180, seconds=8.0, extra=["-g", "50"])
    store.put_file("input", "clips/short.mp4", src)
    task, _ = backend.submit(
        Task(
            kind="transcode",
            input=InputRef(bucket="input", key="clips/short.mp4"),
            params={"transcode_types": ["mp4_standard"], "split": False},
        )
    )
    done = _final(backend, task.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.children == 0 and backend.children(task.id) == []
