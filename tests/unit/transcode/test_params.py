"""Submit-time validation: bad requests fail before they are queued, with a clear reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conveyor.errors import InvalidKey, InvalidParams
from conveyor.models import InputRef
from conveyor.processors.transcode import TranscodeProcessor
from conveyor.processors.transcode.profiles import ProfileConfigError

REF = InputRef(bucket="input", key="v.mp4")


def test_normalises_and_dedupes() -> None:
    proc = TranscodeProcessor(None)
    out = proc.validate(
        {"transcode_types": ["thumbnail", " mp4_smooth", "thumbnail"], "output_prefix": "/a/b/"},
        REF,
    )
    assert out == {
        "transcode_types": ["thumbnail", "mp4_smooth"],
        "output_prefix": "a/b",
        "segment_seconds": None,
        "timeout_s": None,
        "split": None,
        "chunk": None,
        "audio_part": None,
    }


def test_unknown_type_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidParams) as err:
        TranscodeProcessor(None).validate({"transcode_types": ["mp4_standard", "4k_hdr"]}, REF)
    msg = str(err.value)
    assert msg.startswith("unknown transcode type '4k_hdr'; known types: mp4_standard, mp4_smooth")
    assert msg.endswith("thumbnail, hls, dash, cmaf")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"transcode_types": []}, "transcode_types"),
        ({}, "transcode_types"),
        ({"transcode_types": "mp4_standard"}, "transcode_types"),
        ({"transcode_types": [""]}, "empty"),
        ({"transcode_types": ["thumbnail"], "colour": "red"}, "colour"),
        ({"transcode_types": ["thumbnail"], "timeout_s": -1}, "timeout_s"),
    ],
)
def test_invalid_params(params: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidParams) as err:
        TranscodeProcessor(None).validate(params, REF)
    assert needle in str(err.value)


def test_output_prefix_is_a_safe_key() -> None:
    with pytest.raises(InvalidKey):
        TranscodeProcessor(None).validate(
            {"transcode_types": ["thumbnail"], "output_prefix": "a/../../etc"}, REF
        )


def test_settings_object_adds_profiles_and_options() -> None:
    settings = SimpleNamespace(
        transcode_profiles={"tiny": {"codec": "h264", "max_width": 160}},
        ffmpeg="/opt/ffmpeg",
        ffprobe="/opt/ffprobe",
        encoder="cpu",
        preview_seconds=4.0,
    )
    proc = TranscodeProcessor(settings)
    assert (proc.ffmpeg, proc.ffprobe, proc.encoder_mode, proc.preview_seconds) == (
        "/opt/ffmpeg",
        "/opt/ffprobe",
        "cpu",
        4.0,
    )
    assert proc.validate({"transcode_types": ["tiny"]}, REF)["transcode_types"] == ["tiny"]
    assert proc.known_types()[-1] == "tiny"


def test_settings_without_transcode_attributes_use_defaults() -> None:
    proc = TranscodeProcessor(SimpleNamespace(other=1))
    assert (proc.ffmpeg, proc.encoder_mode, proc.preview_seconds) == ("ffmpeg", "auto", 10.0)


def test_bad_settings_fail_at_start_not_at_run() -> None:
    with pytest.raises(ValueError, match="encoder"):
        TranscodeProcessor(SimpleNamespace(encoder="quantum"))
    with pytest.raises(ProfileConfigError, match="'broken'"):
        TranscodeProcessor(SimpleNamespace(transcode_profiles={"broken": {"crf": 99}}))


def test_registry_finds_transcode() -> None:
    from conveyor.processors import ProcessorRegistry

    assert isinstance(ProcessorRegistry.load(None).get("transcode"), TranscodeProcessor)
