from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import load_settings, parse_duration
from conveyor.processors.transcode.settings import DEFAULT_TRANSCODE_TYPES


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "INPUT_BUCKET",
        "OUTPUT_BUCKET",
        "MAX_CONCURRENT_TASKS",
        "POLL_INTERVAL",
        "API_PORT",
        "API_HOST",
        "TEMP_DIR",
        "LOG_LEVEL",
        "DEFAULT_TRANSCODE_TYPES",
        "CONVEYOR_ENV",
        "CONVEYOR_DATA_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "config.yaml"))


def test_defaults_are_embedded(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.backend_url == f"sqlite:///{tmp_path.resolve()}/conveyor.db"
    assert s.storage_url == f"file://{tmp_path.resolve()}/buckets"
    assert (s.api_host, s.api_port) == ("127.0.0.1", 9999)
    assert s.default_transcode_types == DEFAULT_TRANSCODE_TYPES
    assert s.max_attempts == 3


def test_seed_002_names_are_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INPUT_BUCKET", "videos-in")
    monkeypatch.setenv("OUTPUT_BUCKET", "videos-out")
    monkeypatch.setenv("MAX_CONCURRENT_TASKS", "4")
    monkeypatch.setenv("POLL_INTERVAL", "10s")
    monkeypatch.setenv("API_PORT", "8088")
    monkeypatch.setenv("TEMP_DIR", str(tmp_path / "ffmpeg_processing"))
    s = load_settings(data_dir=tmp_path)
    assert (s.input_bucket, s.output_bucket) == ("videos-in", "videos-out")
    assert s.max_concurrent_tasks == 4
    assert s.poll_interval == 10.0
    assert s.api_port == 8088
    assert s.temp_dir == tmp_path / "ffmpeg_processing"


def test_conveyor_prefix_and_csv_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONVEYOR_INPUT_BUCKET", "in2")
    monkeypatch.setenv("DEFAULT_TRANSCODE_TYPES", "thumbnail, mp4_smooth")
    s = load_settings(data_dir=tmp_path)
    assert s.input_bucket == "in2"
    assert s.default_transcode_types == ["thumbnail", "mp4_smooth"]


def test_config_yaml_environments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "default:\n  input_bucket: base-in\n  max_concurrent_tasks: 2\n"
        "production:\n  max_concurrent_tasks: 8\n"
        "  transcode_profiles:\n    tiny:\n      codec: h264\n      max_width: 160\n"
    )
    s = load_settings(data_dir=tmp_path)
    assert (s.input_bucket, s.max_concurrent_tasks) == ("base-in", 2)
    monkeypatch.setenv("CONVEYOR_ENV", "production")
    s = load_settings(data_dir=tmp_path)
    assert (s.input_bucket, s.max_concurrent_tasks) == ("base-in", 8)
    assert "tiny" in s.transcode_profiles
    monkeypatch.setenv("MAX_CONCURRENT_TASKS", "3")  # env beats the file
    assert load_settings(data_dir=tmp_path).max_concurrent_tasks == 3


@pytest.mark.parametrize(
    ("raw", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), (3, 3.0), ("1.5", 1.5)]
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


def test_bad_duration_is_named() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("soon")
