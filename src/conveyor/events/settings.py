"""The events' settings (``CONVEYOR_EVENTS_*``), kept beside them rather than in the
core ``Settings``: only the dispatcher and the webhook checks read them."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EventSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_EVENTS_", extra="ignore")

    # run the dispatcher in this process (the API's processes do; a worker never does)
    dispatch: bool = True
    # CIDR ranges a webhook may reach although they are not public, comma-separated
    # (e.g. "10.20.0.0/16" for receivers on the private network; "127.0.0.1/32" in tests)
    allow_cidrs: str = ""
    # a delivery's whole time (connect, send, the answer's status and first KiB), not
    # per read: a receiver that drips its answer is cut off when it is up
    timeout_s: float = Field(10.0, gt=0, le=60)
    # retries: base * 2^(try-1), at most backoff_max_s apart, given up max_age_s after the event
    backoff_base_s: float = Field(5.0, gt=0)
    backoff_max_s: float = Field(3600.0, gt=0)
    max_age_s: float = Field(86400.0, gt=0)
    concurrency: int = Field(8, ge=1, le=64)  # deliveries in flight at once
    poll_s: float = Field(0.5, gt=0)  # how often an idle dispatcher looks for new events
    retention_days: float = Field(7.0, gt=0)  # delivered deliveries and their events kept
    # progress events: at most one per task per this many seconds; 0 (the default): none
    progress_s: float = Field(0.0, ge=0)
    # a task's metadata: a JSON object of at most this many bytes
    metadata_max_bytes: int = Field(4096, ge=64, le=65536)
    external_id_max: int = Field(256, ge=8, le=1024)

    def cidrs(self) -> list[str]:
        return [c.strip() for c in self.allow_cidrs.split(",") if c.strip()]
