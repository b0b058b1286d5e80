"""What leaves a job's output folder: regular files only, names checked, within caps.

Real tar streams (as the Docker Engine makes them, built here with tarfile) and
real folders with links, fifos and a folder swapped for a link mid-walk.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest

from conveyor.processors.container.sandbox import (
    ChunkStream,
    Limits,
    OutputsTooLarge,
    clean_name,
    copy_tree,
    extract_tar,
    job_tar,
    stream_budget,
)

BIG = Limits(10**9, 10_000)


def _tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tuple):
                tar.addfile(e[0], io.BytesIO(e[1]))
            else:
                tar.addfile(e)
    buf.seek(0)
    return buf


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_000_000
    return info, data


def _entry(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_only_regular_files_come_out_of_an_engine_archive(tmp_path: Path) -> None:
    stream = _tar(
        [
            _entry("outputs", tarfile.DIRTYPE),
            _file("outputs/model.pt", b"weights"),
            _file("outputs/rootsh", b"\x7fELF", mode=0o4755),
            _entry("outputs/etc", tarfile.SYMTYPE, "/etc"),
            _entry("outputs/passwd", tarfile.SYMTYPE, "/etc/passwd"),
            _entry("outputs/hard", tarfile.LNKTYPE, "/etc/shadow"),
            _entry("outputs/same", tarfile.LNKTYPE, "outputs/model.pt"),
            _entry("outputs/dev", tarfile.CHRTYPE),
            _entry("outputs/fifo", tarfile.FIFOTYPE),
            _file("outputs/../../escape", b"x"),
            _file("outputs/.conveyor-staging/x", b"x"),
            _file("other/file", b"x"),
            _file("outputs/sub/dir/deep.txt", b"deep"),
        ]
    )
    snap = extract_tar(stream, tmp_path / "out", BIG)
    assert sorted(snap.files) == ["model.pt", "rootsh", "same", "sub/dir/deep.txt"]
    assert (tmp_path / "out/same").read_bytes() == b"weights"  # a hard link inside: a copy
    for entry in snap.files.values():
        st = entry.path.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600  # no setuid
    assert stat.S_IMODE((tmp_path / "out/sub").stat().st_mode) == 0o700
    skipped = " ".join(snap.skipped)
    for name in ("etc", "passwd", "hard", "dev", "fifo", "escape", ".conveyor-staging"):
        assert name in skipped, (name, snap.skipped)
    assert not (tmp_path / "escape").exists()


def test_caps_on_files_and_bytes_fail_the_copy(tmp_path: Path) -> None:
    many = _tar([_file(f"outputs/{i}", b"x") for i in range(11)])
    with pytest.raises(OutputsTooLarge, match="more than 10 files"):
        extract_tar(many, tmp_path / "a", Limits(10**6, 10))
    big = _tar([_file("outputs/a", b"x" * 600), _file("outputs/b", b"x" * 600)])
    with pytest.raises(OutputsTooLarge, match="more than 1000 bytes"):
        extract_tar(big, tmp_path / "b", Limits(1000, 10))
    # files a snapshot does not take still count: the folder's whole size is capped
    with pytest.raises(OutputsTooLarge):
        big.seek(0)
        extract_tar(big, tmp_path / "c", Limits(1000, 10), want=lambda *_: False)


def test_the_stream_reader_refuses_more_than_its_budget() -> None:
    chunks = [b"x" * 1000] * 5
    with pytest.raises(OutputsTooLarge):
        io.BufferedReader(ChunkStream(chunks, 2500)).read()
    assert io.BufferedReader(ChunkStream(chunks, 5000)).read() == b"x" * 5000
    assert stream_budget(Limits(100, 10)) > 100


def test_copy_tree_takes_regular_files_and_never_follows_a_link(tmp_path: Path) -> None:
    src = tmp_path / "job"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    (src / "etc").symlink_to("/etc")
    (src / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(src / "fifo")
    snap = copy_tree(src, tmp_path / "out", BIG)
    assert sorted(snap.files) == ["a.txt", "sub/b.txt"]
    assert sorted(s.split(" ")[0] for s in snap.skipped) == ["etc", "fifo", "passwd"]
    assert (tmp_path / "out/sub/b.txt").read_text() == "b"


def test_copy_tree_against_a_folder_swapped_for_a_link_in_a_loop(tmp_path: Path) -> None:
    """The race of issue 13 finding 2: whatever the timing, nothing of /etc comes out."""
    src = tmp_path / "job"
    real = src / "real"
    real.mkdir(parents=True)
    for name in ("passwd", "group", "hostname"):
        (real / name).write_text("mine\n")
    stop = threading.Event()

    def swap() -> None:
        d = src / "d"
        while not stop.is_set():
            real.rename(d)
            d.rename(real)
            d.symlink_to("/etc")
            d.unlink()

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        for i in range(200):
            snap = copy_tree(src, tmp_path / f"out{i}", BIG)
            for entry in snap.files.values():
                assert entry.path.read_bytes() == b"mine\n", entry
    finally:
        stop.set()
        t.join()


def test_copy_tree_caps(tmp_path: Path) -> None:
    src = tmp_path / "job"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"x" * 100)
    with pytest.raises(OutputsTooLarge):
        copy_tree(src, tmp_path / "a", Limits(250, 10))
    with pytest.raises(OutputsTooLarge):
        copy_tree(src, tmp_path / "b", Limits(10**6, 2))
    assert len(copy_tree(src, tmp_path / "c", Limits(300, 3)).files) == 3
    for i in range(4):
        (src / f"d{i}").mkdir()
    with pytest.raises(OutputsTooLarge, match="folders"):
        copy_tree(src, tmp_path / "d", Limits(10**6, 3))


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("a/b.txt", "a/b.txt"),
        ("./a//b", "a/b"),
        ("../x", None),
        ("a/../../x", None),
        ("", None),
        ("a\nb", None),
        ("a\x00b", None),
        (".conveyor-staging/x", None),
        ("bad\udcff", None),
    ],
)
def test_names_are_checked_like_object_keys(name: str, rel: str | None) -> None:
    assert clean_name(name) == rel


def test_the_job_archive_gives_inputs_to_root_and_the_output_folder_to_the_job(
    tmp_path: Path,
) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    (inputs / "sets").mkdir(parents=True)
    (inputs / "sets" / "data.csv").write_text("1,2\n")
    outputs.mkdir()
    (outputs / "ckpt").write_text("step-9")
    (outputs / "link").symlink_to("/etc/passwd")
    tar = job_tar(
        tmp_path / "job.tar",
        inputs=inputs,
        input_dir="/conveyor/inputs",
        outputs=outputs,
        output_dir="/data/out",
        home="/conveyor/home",
        uid=65534,
        gid=65534,
    )
    with tarfile.open(tar) as t:
        got = {m.name: (m.type, m.uid, oct(m.mode)) for m in t.getmembers()}
    assert got == {
        "conveyor/inputs": (tarfile.DIRTYPE, 0, "0o755"),
        "conveyor/inputs/sets": (tarfile.DIRTYPE, 0, "0o755"),
        "conveyor/inputs/sets/data.csv": (tarfile.REGTYPE, 0, "0o644"),
        "data/out": (tarfile.DIRTYPE, 65534, "0o755"),
        "data/out/ckpt": (tarfile.REGTYPE, 65534, "0o644"),
        "conveyor/home": (tarfile.DIRTYPE, 65534, "0o700"),
    }
