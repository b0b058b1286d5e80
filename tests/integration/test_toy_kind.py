"""A kind is one folder: a toy kind, installed from a test-only entry point, works
end to end with no change to Conveyor.

The toy kind lives in this file only.  It is written into a fake distribution
(``toykind-0.1.dist-info`` with an ``entry_points.txt`` declaring the
``conveyor.processors`` group, beside the ``toykind`` module) on the
``PYTHONPATH`` of a real ``conveyor up``.  Its processor takes ``.toy`` files,
has a params model, a settings model with its own env prefix, one console field
and a label in both languages; then ``POST /api/queue/add``, ``conveyor submit
FILE`` (by the file's suffix), the upload trigger and the console's add-task page
all take it, and a worker runs it to completed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST_ENV, Server, launch, wait_task

TOY_MODULE = '''
"""A toy kind: says a word (and the configured greeting) before the text of a .toy file."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from conveyor.config import KindSettings
from conveyor.models import OutputFile
from conveyor.processors.base import (
    FormField,
    KindForm,
    Processor,
    ProcessorContext,
    download_input,
    publishing,
)


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    word: str = Field("hello", min_length=1, max_length=40)
    timeout_s: float | None = None


class ToySettings(KindSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_TOY_")

    greeting: str = "hi"


class ToyProcessor(Processor):
    kind = "toy"
    params_model = ToyParams
    settings_model = ToySettings
    suffixes = frozenset({".toy"})
    labels: ClassVar[dict[str, dict[str, str]]] = {
        "en": {"kind.toy": "toy game", "toy.form": "Toy options", "toy.word": "Word to say"},
        "zh-CN": {"kind.toy": "玩具游戏", "toy.form": "玩具选项", "toy.word": "要说的词"},
    }

    def form(self) -> KindForm:
        field = FormField("toy_word", "word", "text", "toy.word", default="hello")
        return KindForm(legend="toy.form", fields=(field,))

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        params = ToyParams.model_validate(ctx.task.params)
        assert ctx.task.input is not None
        src = download_input(ctx, ctx.task.input, ctx.workdir / "input.toy")
        out = ctx.workdir / "said.txt"
        greeting = self.config.greeting  # type: ignore[attr-defined]
        out.write_text(f"{greeting} {params.word}: {src.read_text()}")
        ctx.report_progress(50.0, "toy", "saying it")
        published: list[OutputFile] = []
        with publishing(ctx, published):
            key = f"{ctx.task.id}/said.txt"
            published.append(ctx.stager.put_file("said", key, out, "text/plain"))
        return published
'''

METADATA = "Metadata-Version: 2.1\nName: toykind\nVersion: 0.1\n"
ENTRY_POINTS = "[conveyor.processors]\ntoy = toykind:ToyProcessor\n"


def toy_distribution(root: Path) -> Path:
    """A folder that, on ``sys.path``, installs the toy kind (a module and its metadata)."""
    site = root / "toy-site"
    info = site / "toykind-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(METADATA)
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "toykind.py").write_text(TOY_MODULE)
    return site


def said(server: Server, task: dict[str, Any]) -> str:
    assert task["status"] == "completed", task
    (out,) = task["outputs"]
    r = server.client.get(f"/api/files/{out['bucket']}/{out['key']}")
    assert r.status_code == 200, r.text
    return r.text


def test_a_toy_kind_from_an_entry_point_works_everywhere(tmp_path: Path) -> None:
    site = toy_distribution(tmp_path)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**FAST_ENV, "PYTHONPATH": path, "CONVEYOR_TOY_GREETING": "ahoy"}
    server = launch(tmp_path, "up", env=env)
    try:
        api = server.client
        # the server knows the kind and what it takes
        kinds = {k["kind"]: k for k in api.get("/api/kinds").json()["kinds"]}
        assert kinds["toy"]["suffixes"] == [".toy"] and "word" in kinds["toy"]["params"]

        # 1. POST /api/queue/add with the kind: accepted, and a worker runs it
        up = api.put("/api/files/input/api/one.toy", content=b"from the API")
        assert up.status_code == 201, up.text
        body = {
            "kind": "toy",
            "input_key": "api/one.toy",
            "params": {"word": "hey"},
            "idempotency_key": up.json()["upload_key"],  # the upload trigger's task, too
        }
        r = api.post("/api/queue/add", json=body)
        assert r.status_code == 201, r.text
        task = wait_task(api, r.json()["task_id"], timeout=60)
        assert task["kind"] == "toy" and said(server, task) == "ahoy hey: from the API"
        bad = api.post("/api/queue/add", json={**body, "params": {"colour": "red"}})
        assert bad.status_code == 400 and "invalid toy parameter colour" in bad.text

        # 2. conveyor submit FILE picks the kind by the file's suffix (the CLI itself has
        # no toy kind installed: the server says which kind takes .toy)
        local = tmp_path / "cli.toy"
        local.write_text("from the CLI")
        cli = [sys.executable, "-m", "conveyor", "submit", str(local), "--url", server.url]
        out = subprocess.run(
            [*cli, "--wait"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr + server.log_text()
        print(out.stdout)
        (task,) = tasks_for(api, "cli.toy")
        assert task["kind"] == "toy" and task["trigger"] == "api"
        assert said(server, wait_task(api, task["id"])) == "ahoy hello: from the CLI"

        # 3. a .toy file dropped into the input bucket's folder: queued as a toy task by
        # the upload trigger; a file no kind takes is not queued
        inbox = server.data_dir / "buckets" / "input"
        (inbox / "notes.txt").write_text("no kind takes this")
        (inbox / "dropped.toy").write_text("from the folder")
        task = wait_for_task(api, "dropped.toy")
        assert task["kind"] == "toy" and task["trigger"] == "upload"
        assert said(server, wait_task(api, task["id"])) == "ahoy hello: from the folder"
        assert tasks_for(api, "notes.txt") == []
        # the upload made through the API in step 1 is still one task
        assert len(tasks_for(api, "api/one.toy")) == 1

        # 4. the console's add-task page offers the kind, its label and its field, in
        # English and Simplified Chinese, and submits it
        en = api.get("/admin/tasks/new", headers={"accept-language": "en"}).text
        assert 'name="kind" value="toy"' in en and "toy game" in en
        assert 'data-for-kind="toy"' in en and "Toy options" in en
        assert 'name="toy_word" id="toy-word" value="hello"' in en and "Word to say" in en
        assert ".toy" in en.split('id="file"')[1].split(">")[0]  # the file picker takes it
        zh = api.get("/admin/tasks/new", headers={"accept-language": "zh-CN"}).text
        assert "玩具游戏" in zh and "要说的词" in zh
        form = {"kind": "toy", "bucket": "input", "key": "dropped.toy", "toy_word": "yo"}
        r = api.post("/admin/tasks/new", data=form, follow_redirects=False)
        assert r.status_code == 303, r.text
        task = wait_task(api, r.headers["location"].rsplit("/", 1)[1])
        assert task["trigger"] == "console" and task["params"]["word"] == "yo"
        assert said(server, task) == "ahoy yo: from the folder"
        page = api.get(f"/admin/tasks/{task['id']}", headers={"accept-language": "en"}).text
        assert "toy game" in page  # the kind's label on its task's page
    finally:
        server.stop()


def tasks_for(api: httpx.Client, key: str) -> list[dict[str, Any]]:
    listed = api.get("/api/tasks", params={"limit": 100}).json()["tasks"]
    return [t for t in listed if (t.get("input") or {}).get("key") == key]


def wait_for_task(api: httpx.Client, key: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = tasks_for(api, key)
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no task for {key} after {timeout} s")
