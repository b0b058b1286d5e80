"""Process logging: every record carries the task id (and attempt) it belongs to.

The ids travel in context variables so that library code deep inside a
processor logs with the right task without passing it around.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

current_task: ContextVar[str | None] = ContextVar("current_task", default=None)
current_attempt: ContextVar[int | None] = ContextVar("current_attempt", default=None)
current_worker: ContextVar[str | None] = ContextVar("current_worker", default=None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # ``extra={"task_id": ...}`` wins: code outside a task (the service logging a
        # submit or a cancel) names the task it speaks of
        task_id = getattr(record, "task_id", None) or current_task.get()
        record.__dict__.update(
            task_id=task_id,
            attempt=getattr(record, "attempt", None) or current_attempt.get(),
            worker_id=getattr(record, "worker_id", None) or current_worker.get(),
            task_tag=f" [task={task_id}]" if task_id else "",
        )
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("task_id", "attempt", "worker_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json"
    # neither format prints the caller's file and line, the thread or the process: the
    # logging docs' "Optimization" switches skip collecting them (a worker writes two
    # lines a task; the caller lookup alone was about a tenth of a line's cost)
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(task_tag)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
