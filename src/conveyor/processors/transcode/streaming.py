"""A streaming group's folder: what it must hold, checked before anything is published.

ffmpeg's ``hls`` and ``dash`` muxers write a playlist or manifest and many
segments.  Nothing is staged until the group is known whole: the entry
points (``master.m3u8``, ``manifest.mpd``) list exactly the rungs that were
planned, at their planned sizes, plus the audio rendition when the input has
sound; every playlist is complete (``#EXT-X-ENDLIST``); every file a playlist
or manifest names exists, is not empty and lies inside the group's folder;
and ffprobe opens the entry points and every variant with the codec, size and
length expected.  The files published are exactly the ones named (the entry
points, the variant playlists, init and media segments), each with its content
type, so a player never meets a dangling reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree  # nosec B405 - parses only the manifest ffmpeg just wrote

from conveyor.errors import InputRejected, ProcessorError
from conveyor.processors.transcode.command import HLS_PLAYLIST, GroupPlan
from conveyor.processors.transcode.probe import (
    CODEC_NAMES,
    MIN_FULL_DURATION_RATIO,
    run_ffprobe,
)
from conveyor.processors.transcode.profiles import AUDIO_RENDITION

CONTENT_TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
}
_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_MPD_NS = "{urn:mpeg:dash:schema:mpd:2011}"


def content_type(path: PurePosixPath | Path, role: str) -> str:
    """An init segment is a (moov-only) MP4 whatever its suffix; the rest by suffix."""
    if role == "init":
        return "video/mp4"
    return CONTENT_TYPES.get(path.suffix, "application/octet-stream")


@dataclass(frozen=True)
class GroupFile:
    """One file of a group, as it will be published under ``<prefix>/<group>/<rel>``."""

    path: Path
    rel: str
    role: str  # master | manifest | playlist | init | segment
    rendition: str | None

    @property
    def content_type(self) -> str:
        return content_type(self.path, self.role)


@dataclass(frozen=True)
class Rendition:
    """What ffprobe found in one variant."""

    name: str
    codec: str
    width: int | None
    height: int | None
    duration: float | None
    playlist: str | None = None  # its HLS playlist, relative to the group's folder


@dataclass(frozen=True)
class GroupResult:
    plan: GroupPlan
    files: list[GroupFile]
    renditions: list[Rendition]
    longest_segment: float  # seconds, over every HLS playlist and DASH timeline
    duration: float  # of the entry point, as ffprobe reads it

    @property
    def size(self) -> int:
        return sum(f.path.stat().st_size for f in self.files)

    def meta(self) -> dict[str, Any]:
        """The summary a group's entry points carry in the task's outputs."""
        return {
            "group": self.plan.name,
            "kind": self.plan.group.kind,
            "segment_seconds": self.plan.segment_seconds,
            "gop_frames": self.plan.gop,
            "longest_segment": round(self.longest_segment, 3),
            "duration": round(self.duration, 3),
            "renditions": [
                {
                    "name": r.name,
                    "codec": r.codec,
                    **({"width": r.width, "height": r.height} if r.width else {}),
                    **({"playlist": r.playlist} if r.playlist else {}),
                }
                for r in self.renditions
            ],
            "dropped": list(self.plan.dropped),
            "files": len(self.files),
        }


# -- HLS playlists -----------------------------------------------------------------------
@dataclass(frozen=True)
class MediaPlaylist:
    segments: list[str]
    durations: list[float]
    init: str | None
    ended: bool


@dataclass(frozen=True)
class Variant:
    uri: str
    attrs: dict[str, str]


def _attrs(text: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTR.findall(text)}


def parse_master(text: str) -> tuple[list[Variant], list[Variant]]:
    """``(variant streams, alternative renditions)`` of a master playlist."""
    variants: list[Variant] = []
    media: list[Variant] = []
    pending: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = _attrs(line.partition(":")[2])
        elif line.startswith("#EXT-X-MEDIA:"):
            attrs = _attrs(line.partition(":")[2])
            if "URI" in attrs:
                media.append(Variant(attrs["URI"], attrs))
        elif line and not line.startswith("#") and pending is not None:
            variants.append(Variant(line, pending))
            pending = None
    return variants, media


def parse_media_playlist(text: str) -> MediaPlaylist:
    segments: list[str] = []
    durations: list[float] = []
    init: str | None = None
    ended = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXTINF:"):
            durations.append(float(line.partition(":")[2].split(",")[0]))
        elif line.startswith("#EXT-X-MAP:"):
            init = _attrs(line.partition(":")[2]).get("URI")
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#"):
            segments.append(line)
    return MediaPlaylist(segments, durations, init, ended)


# -- DASH manifests ----------------------------------------------------------------------
@dataclass(frozen=True)
class Representation:
    id: str
    content_type: str  # video | audio
    width: int | None
    height: int | None
    init: str
    segments: list[str]
    durations: list[float]


def _expand(template: str, rep_id: str, number: int | None = None) -> str:
    out = template.replace("$RepresentationID$", rep_id).replace("$$", "$")
    if number is not None:
        out = re.sub(
            r"\$Number(%0(\d+)d)?\$",
            lambda m: str(number).zfill(int(m.group(2) or 0)),
            out,
        )
    return out


def parse_mpd(text: str) -> list[Representation]:
    """The representations of a static manifest written with ``-use_template 1
    -use_timeline 1``: each one's init segment and every media segment, by name."""
    root = ElementTree.fromstring(text)  # nosec B314 - our own ffmpeg's output, no DTD
    reps: list[Representation] = []
    for aset in root.iter(f"{_MPD_NS}AdaptationSet"):
        for rep in aset.iter(f"{_MPD_NS}Representation"):
            tmpl = rep.find(f"{_MPD_NS}SegmentTemplate")
            if tmpl is None:
                tmpl = aset.find(f"{_MPD_NS}SegmentTemplate")
            if tmpl is None:
                raise ProcessorError("manifest.mpd has a representation without a template")
            rid = rep.get("id", "")
            kind = aset.get("contentType") or (rep.get("mimeType") or "/").split("/")[0]
            timescale = int(tmpl.get("timescale", "1"))
            number = int(tmpl.get("startNumber", "1"))
            segments: list[str] = []
            durations: list[float] = []
            timeline = tmpl.find(f"{_MPD_NS}SegmentTimeline")
            for s in timeline.iter(f"{_MPD_NS}S") if timeline is not None else ():
                for _ in range(1 + int(s.get("r", "0"))):
                    segments.append(_expand(tmpl.get("media", ""), rid, number))
                    durations.append(int(s.get("d", "0")) / timescale)
                    number += 1
            reps.append(
                Representation(
                    id=rid,
                    content_type=kind,
                    width=int(rep.get("width", "0")) or None,
                    height=int(rep.get("height", "0")) or None,
                    init=_expand(tmpl.get("initialization", ""), rid),
                    segments=segments,
                    durations=durations,
                )
            )
    return reps


# -- the check -----------------------------------------------------------------------------
class _Folder:
    """The group's folder and the files named so far (each once, in naming order)."""

    def __init__(self, plan: GroupPlan) -> None:
        self.plan = plan
        self.root = plan.dir.resolve()
        self.files: dict[str, GroupFile] = {}

    def fail(self, what: str) -> ProcessorError:
        return ProcessorError(f"{self.plan.name}: {what}", retryable=False)

    def name(self, uri: str, base: str, role: str, rendition: str | None) -> str:
        """Record the file ``uri`` (relative to ``base``, a folder inside the group) names;
        its path relative to the group's folder.  It must be a plain relative name of a
        non-empty file inside the folder."""
        if "://" in uri or uri.startswith("/") or "?" in uri or "#" in uri:
            raise self.fail(f"{base or '.'} names {uri!r}, not a file of the group")
        rel = str(PurePosixPath(base, uri)) if base else uri
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or ".." in PurePosixPath(rel).parts:
            raise self.fail(f"{uri!r} lies outside the group's folder")
        if not path.is_file() or path.stat().st_size == 0:
            raise self.fail(f"{rel} is missing or empty")
        rel = path.relative_to(self.root).as_posix()
        if rel not in self.files:
            self.files[rel] = GroupFile(path, rel, role, rendition)
        return rel

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8")


def _probe(ffprobe: str, path: Path, group: str) -> dict[str, Any]:
    try:
        return run_ffprobe(ffprobe, path, trusted=True)
    except InputRejected as exc:
        raise ProcessorError(f"{group}: {path.name} is unreadable: {exc.message}") from exc


def _duration(data: dict[str, Any]) -> float:
    try:
        return float((data.get("format") or {}).get("duration") or 0.0)
    except ValueError:
        return 0.0


def _streams(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in data.get("streams") or [] if s.get("codec_type") == kind]


def _check_whole(plan: GroupPlan, what: str, got: float) -> None:
    """The same truncation rule as a file rendition's: a short group means a damaged input."""
    if got < plan.duration * MIN_FULL_DURATION_RATIO:
        raise InputRejected(
            f"input video looks truncated or damaged: {plan.name} {what} holds only "
            f"{got:.2f} s of the {plan.duration:.2f} s the input declares"
        )


def _check_entry_streams(
    folder: _Folder, what: str, data: dict[str, Any], duration: float | None = None
) -> None:
    """An entry point offers exactly the planned rungs (by size) and the audio, if any,
    and is as long as the input (``duration``: when known better than ffprobe's)."""
    plan = folder.plan
    # a master playlist lists each stream once per program; count distinct streams
    seen = {s.get("index"): s for s in _streams(data, "video")}
    sizes = sorted((int(s.get("width") or 0), int(s.get("height") or 0)) for s in seen.values())
    want = sorted((r.width, r.height) for r in plan.rungs)
    if sizes != want:
        raise folder.fail(f"{what} offers pictures {sizes}, planned {want}")
    audio = {s.get("index"): str(s.get("codec_name")) for s in _streams(data, "audio")}
    if plan.audio and set(audio.values()) != {"aac"}:
        raise folder.fail(f"{what} should offer one AAC audio rendition, has {audio or 'none'}")
    if not plan.audio and audio:
        raise folder.fail(f"{what} should have no audio, has {sorted(audio.values())}")
    _check_whole(plan, what, _duration(data) if duration is None else duration)


def _hls(
    folder: _Folder,
    master: str,
    ffprobe: str,
    run: Callable[..., list[Any]],
    *,
    shared_segments: bool,
) -> tuple[list[Rendition], float, float]:
    """A master playlist, its variants and their segments; the renditions, the longest
    segment and the master's duration.  ``shared_segments``: CMAF's, whose variants are
    named by position."""
    plan = folder.plan
    variants, media = parse_master(folder.read(master))
    if shared_segments:  # ffmpeg's dash muxer: media_<stream index>.m3u8 beside the manifest
        want = {f"media_{k}.m3u8": r for k, r in enumerate(plan.rungs)}
        audio_uri = f"media_{len(plan.rungs)}.m3u8"
    else:
        want = {f"{r.name}/{HLS_PLAYLIST}": r for r in plan.rungs}
        audio_uri = f"{AUDIO_RENDITION}/{HLS_PLAYLIST}"
    got = [v.uri for v in variants]
    if sorted(got) != sorted(want):
        raise folder.fail(f"{master} lists variants {got}, planned {sorted(want)}")
    for v in variants:
        r = want[v.uri]
        if v.attrs.get("RESOLUTION") != f"{r.width}x{r.height}":
            raise folder.fail(f"{master}: {v.uri} says {v.attrs.get('RESOLUTION')}")
    media_uris = [m.uri for m in media]
    if media_uris != ([audio_uri] if plan.audio else []):
        raise folder.fail(f"{master} lists audio {media_uris}, expected {audio_uri}")

    playlists: list[tuple[str, str, str]] = []  # (rel, rendition, codec)
    folder.name(master, "", "master", None)
    for v in variants:
        rung = want[v.uri]
        rel = folder.name(v.uri, "", "playlist", rung.name)
        playlists.append((rel, rung.name, CODEC_NAMES[rung.rung.codec]))
    if plan.audio:
        rel = folder.name(audio_uri, "", "playlist", AUDIO_RENDITION)
        playlists.append((rel, AUDIO_RENDITION, "aac"))

    longest = 0.0
    for rel, rendition, _ in playlists:
        pl = parse_media_playlist(folder.read(rel))
        if not pl.ended or not pl.segments:
            raise folder.fail(f"{rel} is not a complete playlist")
        base = str(PurePosixPath(rel).parent).removeprefix(".")
        if pl.init:
            folder.name(pl.init, base, "init", rendition)
        for uri in pl.segments:
            folder.name(uri, base, "segment", rendition)
        longest = max([longest, *pl.durations])

    def probe_variant(rel: str, rendition: str, codec: str) -> Rendition:
        data = _probe(ffprobe, folder.root / rel, plan.name)
        streams = data.get("streams") or []
        if len(streams) != 1 or streams[0].get("codec_name") != codec:
            found = [s.get("codec_name") for s in streams]
            raise folder.fail(f"{rel} should hold one {codec} stream, holds {found}")
        s = streams[0]
        size = (int(s.get("width") or 0), int(s.get("height") or 0))
        if codec != "aac":
            rung = next(r for r in plan.rungs if r.name == rendition)
            if size != (rung.width, rung.height):
                planned = f"{rung.width}x{rung.height}"
                raise folder.fail(f"{rel} is {size[0]}x{size[1]}, planned {planned}")
        _check_whole(plan, rel, _duration(data))
        return Rendition(
            name=rendition,
            codec=codec,
            width=size[0] or None,
            height=size[1] or None,
            duration=_duration(data),
            playlist=rel,
        )

    def probe_master() -> float:
        data = _probe(ffprobe, folder.root / master, plan.name)
        _check_entry_streams(folder, master, data)
        return _duration(data)

    jobs: list[Callable[[], Any]] = [probe_master]
    jobs += [lambda p=p: probe_variant(*p) for p in playlists]  # type: ignore[misc]
    duration, *renditions = run(*jobs)
    return renditions, longest, duration


def _dash(folder: _Folder, ffprobe: str) -> tuple[list[Rendition], float, float]:
    """A manifest, its representations and every segment its timelines name; the
    renditions, the longest segment and the shortest representation's length (from the
    timelines: ffmpeg's DASH demuxer reads a manifest's duration in whole seconds)."""
    plan = folder.plan
    manifest = "manifest.mpd"
    reps = parse_mpd(folder.read(manifest))
    video = [r for r in reps if r.content_type == "video"]
    audio = [r for r in reps if r.content_type == "audio"]
    sizes = [(r.width, r.height) for r in video]
    want = [(r.width, r.height) for r in plan.rungs]
    if sizes != want:
        raise folder.fail(f"{manifest} offers pictures {sizes}, planned {want}")
    if len(audio) != (1 if plan.audio else 0) or len(reps) != len(video) + len(audio):
        raise folder.fail(f"{manifest} has {len(audio)} audio of {len(reps)} representations")
    folder.name(manifest, "", "manifest", None)
    names = [r.name for r in plan.rungs] + [AUDIO_RENDITION] * len(audio)
    longest = 0.0
    for rep, rendition in zip([*video, *audio], names, strict=True):
        if not rep.segments:
            raise folder.fail(f"{manifest}: representation {rep.id} has no segments")
        folder.name(rep.init, "", "init", rendition)
        for uri in rep.segments:
            folder.name(uri, "", "segment", rendition)
        longest = max([longest, *rep.durations])
    lengths = [sum(r.durations) for r in [*video, *audio]]
    data = _probe(ffprobe, folder.root / manifest, plan.name)
    _check_entry_streams(folder, manifest, data, min(lengths))
    renditions = [
        Rendition(rung.name, CODEC_NAMES[rung.rung.codec], rung.width, rung.height, length)
        for rung, length in zip(plan.rungs, lengths, strict=False)
    ]
    if plan.audio:
        renditions.append(Rendition(AUDIO_RENDITION, "aac", None, None, lengths[-1]))
    return renditions, longest, min(lengths)


def verify_group(
    ffprobe: str, plan: GroupPlan, run: Callable[..., list[Any]] | None = None
) -> GroupResult:
    """Check one group's folder against its plan (see the module's docstring) and list
    the files to publish: entry points first, then playlists, then init and media
    segments.  ``run(*calls)`` runs the ffprobe calls (side by side in the processor)."""
    run = run or (lambda *calls: [c() for c in calls])
    folder = _Folder(plan)
    kind = plan.group.kind
    longest = 0.0
    renditions: list[Rendition] = []
    duration = 0.0
    if kind in ("dash", "cmaf"):
        renditions, longest, duration = _dash(folder, ffprobe)
    if kind in ("hls", "cmaf"):
        hls, longest_hls, master_duration = _hls(
            folder, "master.m3u8", ffprobe, run, shared_segments=kind == "cmaf"
        )
        longest = max(longest, longest_hls)
        if kind == "hls":
            renditions, duration = hls, master_duration
        else:  # the same renditions: keep their HLS playlists in the summary
            playlists = {r.name: r.playlist for r in hls}
            renditions = [
                Rendition(r.name, r.codec, r.width, r.height, r.duration, playlists.get(r.name))
                for r in renditions
            ]
    order = {"master": 0, "manifest": 0, "playlist": 1, "init": 2, "segment": 3}
    files = sorted(folder.files.values(), key=lambda f: (order[f.role], f.rel))
    return GroupResult(plan, files, renditions, longest, duration)


def unnamed_files(result: GroupResult) -> Iterable[Path]:
    """Files in the group's folder that no playlist or manifest names (not published)."""
    named = {f.path for f in result.files}
    root = result.plan.dir.resolve()
    return sorted(p for p in root.rglob("*") if p.is_file() and p.resolve() not in named)
