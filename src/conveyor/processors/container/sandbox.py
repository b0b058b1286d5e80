"""Files into and out of a job without ever following a link the job made.

A job may make anything in its output folder: links to ``/etc`` or to the
worker's data dir, swapped in and out while a copy runs; devices; setuid
files; a million tiny files; one file as large as the disk.  What leaves the
folder is taken here, in one of two ways, and only ever as regular files with
names that are valid object keys:

* :func:`extract_tar` reads the tar stream the Docker Engine makes of the
  folder (``get_archive``): the engine builds it inside the container's own
  file system, so a link names a path there, and here a link, a hard link to
  a name outside the archive, a device or a fifo is an entry skipped, never a
  path opened.
* :func:`copy_tree` walks a folder on this host (the local runner's) with
  ``O_NOFOLLOW`` on every component, by file descriptor from the folder
  itself, and copies each regular file through the descriptor it opened.

Both count every file and byte against :class:`Limits` as they go (the
folder's whole size, not only what is taken) and write only into a folder of
ours, as files of mode 0600 in folders of 0700: no setuid bit, no owner of
the job's, no link.  :func:`job_tar` builds what goes the other way: the
input files, owned by root and read-only to the job, and the output folder
with last attempt's checkpoints, owned by the job's uid.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from conveyor.errors import InvalidRequest
from conveyor.storage.base import validate_key

CHUNK = 1024 * 1024
MAX_DEPTH = 128  # a key holds at most 1024 bytes: a deeper folder cannot be named anyway

# (relative name, size, mtime in seconds): whether a snapshot takes the file
Want = Callable[[str, int, float], bool]


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int


class OutputsTooLarge(Exception):
    """The output folder holds more than the worker's caps allow: never retried."""


@dataclass
class FileEntry:
    path: Path  # our copy
    size: int
    mtime: float  # seconds (whole seconds from an engine's tar)


@dataclass
class Snapshot:
    files: dict[str, FileEntry] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "name (why)" of entries not taken
    total_files: int = 0  # regular files in the folder, taken or not
    total_bytes: int = 0
    folders: int = 0  # walked (a folder on this host): bounded like files

    def count(self, limits: Limits, size: int) -> None:
        self.total_files += 1
        self.total_bytes += size
        if self.total_files > limits.max_files:
            raise OutputsTooLarge(
                f"the output folder holds more than {limits.max_files} files "
                "(CONVEYOR_CONTAINER_MAX_OUTPUT_FILES)"
            )
        if self.total_bytes > limits.max_bytes:
            raise OutputsTooLarge(
                f"the output folder holds more than {limits.max_bytes} bytes "
                "(CONVEYOR_CONTAINER_MAX_OUTPUT_BYTES)"
            )

    def skip(self, name: str, why: str) -> None:
        if len(self.skipped) < 1000:
            self.skipped.append(f"{_printable(name)} ({why})")


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name)[:300]


def clean_name(name: str) -> str | None:
    """``name`` as an object key below the task's folder, or None when it cannot be one
    (``..``, control characters, a ``.conveyor*`` segment, too long)."""
    if "\x00" in name or "\\" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    rel = "/".join(parts)
    if any(ord(c) < 32 or c == "\x7f" for c in rel):
        return None
    try:
        rel.encode("utf-8")  # a name that is not UTF-8 (surrogate escapes) is no key
    except UnicodeEncodeError:
        return None
    try:
        validate_key(rel)
    except InvalidRequest:
        return None
    return rel


def private_dir(path: Path) -> Path:
    """A folder only this process's user may enter (0700), made if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _new_file(dest: Path, rel: str) -> IO[bytes]:
    """A new regular file ``dest/rel`` (0600), its folders made 0700; never through a link."""
    target = dest / rel
    here = dest
    for part in rel.split("/")[:-1]:
        here = here / part
        if not here.is_dir():
            here.mkdir(mode=0o700)
    fd = os.open(
        target,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )
    return os.fdopen(fd, "wb")


def _copy(src: IO[bytes], dst: IO[bytes], limit: int) -> int:
    """Copy at most ``limit`` bytes; how many were copied (``limit + 1`` if more came)."""
    n = 0
    while chunk := src.read(min(CHUNK, limit + 1 - n)):
        dst.write(chunk)
        n += len(chunk)
        if n > limit:
            break
    return n


# -- out of a Docker container: the engine's tar stream --------------------------------
class ChunkStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's answer), that
    refuses to read more than ``budget`` bytes."""

    def __init__(self, chunks: Iterable[bytes], budget: int) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = b""
        self._left = budget

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        self._left -= n
        if self._left < 0:
            raise OutputsTooLarge("the output folder's archive is larger than the caps allow")
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def stream_budget(limits: Limits) -> int:
    """Bytes an archive of a folder within ``limits`` can take: data plus headers."""
    return limits.max_bytes + (limits.max_files + 1000) * 3 * 512 + 64 * 1024 * 1024


def extract_tar(
    stream: IO[bytes], dest: Path, limits: Limits, want: Want | None = None
) -> Snapshot:
    """The regular files of an engine's archive of one folder, copied into ``dest``.

    The archive's first component is the folder's own name; every name below it
    is checked like an object key.  Links, devices and fifos are skipped; a hard
    link to a file taken earlier is a copy of it.
    """
    snap = Snapshot()
    private_dir(dest)
    root: str | None = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            head, _, rest = member.name.lstrip("/").partition("/")
            if root is None:
                root = head
            if head != root:
                snap.skip(member.name, "outside the folder")
                continue
            if not rest or member.isdir():
                continue
            rel = clean_name(rest)
            if member.islnk():
                _, _, target = member.linkname.lstrip("/").partition("/")
                linked = clean_name(target)
                if rel is None or linked is None or linked not in snap.files:
                    snap.skip(rest, "a hard link to a file not taken")
                    continue
                entry = snap.files[linked]
                snap.count(limits, entry.size)
                if rel in snap.files or (want is not None and not want(rel, entry.size, 0.0)):
                    continue
                with open(entry.path, "rb") as src, _new_file(dest, rel) as dst:
                    _copy(src, dst, entry.size)
                snap.files[rel] = FileEntry(dest / rel, entry.size, float(member.mtime))
                continue
            if not member.isreg():
                kind = "a link" if member.issym() else "not a regular file"
                snap.skip(rest, kind)
                continue
            if rel is None:
                snap.skip(rest, "not a valid object name")
                continue
            snap.count(limits, member.size)
            if rel in snap.files or (want is not None and not want(rel, member.size, member.mtime)):
                continue
            data = tar.extractfile(member)
            if data is None:
                continue
            try:
                dst_ctx = _new_file(dest, rel)
            except OSError as exc:  # e.g. 'a' taken as a file and now 'a/b'
                snap.skip(rest, f"cannot be written: {exc.strerror}")
                continue
            with dst_ctx as dst:
                n = _copy(data, dst, member.size)
            if n != member.size:
                raise OSError(f"the archive ended inside {rel}")
            snap.files[rel] = FileEntry(dest / rel, member.size, float(member.mtime))
    return snap


# -- out of a folder on this host: the local runner's ------------------------------------
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def copy_tree(src: Path, dest: Path, limits: Limits, want: Want | None = None) -> Snapshot:
    """The regular files below ``src``, copied into ``dest`` without following a link:
    every folder and file is opened relative to its parent's descriptor with
    ``O_NOFOLLOW``, and checked by ``fstat`` on what was opened."""
    snap = Snapshot()
    private_dir(dest)
    try:
        root = os.open(src, _DIR_FLAGS)
    except FileNotFoundError:
        return snap
    try:
        _walk(root, "", 0, dest, limits, want, snap)
    finally:
        os.close(root)
    return snap


def _walk(
    dir_fd: int,
    prefix: str,
    depth: int,
    dest: Path,
    limits: Limits,
    want: Want | None,
    snap: Snapshot,
) -> None:
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    for name in names:
        shown = prefix + name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            snap.folders += 1
            if snap.folders > limits.max_files:
                raise OutputsTooLarge(
                    f"the output folder holds more than {limits.max_files} folders "
                    "(CONVEYOR_CONTAINER_MAX_OUTPUT_FILES)"
                )
            if depth >= MAX_DEPTH:
                snap.skip(shown, "too deep")
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:  # swapped for a link or removed since: not ours to follow
                snap.skip(shown, "not a folder when opened")
                continue
            try:
                _walk(fd, shown + "/", depth + 1, dest, limits, want, snap)
            finally:
                os.close(fd)
            continue
        if not stat.S_ISREG(st.st_mode):
            snap.skip(shown, "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file")
            continue
        rel = clean_name(shown)
        if rel is None:
            snap.skip(shown, "not a valid object name")
            continue
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            snap.skip(shown, "not a regular file when opened")
            continue
        with os.fdopen(fd, "rb") as fh:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                snap.skip(shown, "not a regular file when opened")
                continue
            mtime = fst.st_mtime_ns / 1e9
            snap.count(limits, fst.st_size)
            if want is not None and not want(rel, fst.st_size, mtime):
                continue
            left = limits.max_bytes - (snap.total_bytes - fst.st_size)
            with _new_file(dest, rel) as out:
                n = _copy(fh, out, max(0, left))
            if n > left:  # it grew past the cap while we copied it
                raise OutputsTooLarge(
                    f"the output folder holds more than {limits.max_bytes} bytes "
                    "(CONVEYOR_CONTAINER_MAX_OUTPUT_BYTES)"
                )
            snap.files[rel] = FileEntry(dest / rel, n, mtime)


# -- into a Docker container ----------------------------------------------------------
def _tar_dir(tar: tarfile.TarFile, name: str, mode: int, uid: int, gid: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode, info.uid, info.gid = mode, uid, gid
    info.mtime = int(time.time())
    tar.addfile(info)


def _tar_tree(tar: tarfile.TarFile, src: Path, into: str, uid: int, gid: int, mode: int) -> None:
    """Add the folders and regular files below ``src`` (a folder of ours) under ``into``."""
    for dirpath, dirs, files in os.walk(src, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(src).as_posix()
        base = into if rel_dir == "." else f"{into}/{rel_dir}"
        for d in sorted(dirs):
            if not (here / d).is_symlink():
                _tar_dir(tar, f"{base}/{d}", 0o755, uid, gid)
        for f in sorted(files):
            path = here / f
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            info = tarfile.TarInfo(f"{base}/{f}")
            info.size, info.mode, info.uid, info.gid = st.st_size, mode, uid, gid
            info.mtime = int(st.st_mtime)
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def job_tar(
    dest: Path,
    *,
    inputs: Path,
    input_dir: str,
    outputs: Path,
    output_dir: str,
    home: str,
    uid: int,
    gid: int,
) -> Path:
    """The archive put into a created container before it starts, extracted at ``/``:
    ``input_dir`` with the files of ``inputs`` (root's, read-only to the job), the
    output folder with the checkpoints in ``outputs`` and a home folder (the job's)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        top = input_dir.strip("/")
        _tar_dir(tar, top, 0o755, 0, 0)
        _tar_tree(tar, inputs, top, 0, 0, 0o644)
        out = output_dir.strip("/")
        _tar_dir(tar, out, 0o755, uid, gid)
        _tar_tree(tar, outputs, out, uid, gid, 0o644)
        _tar_dir(tar, home.strip("/"), 0o700, uid, gid)
    return dest
