"""The AWS shape end to end on a throwaway ``moto_server``: S3 + SQS + DynamoDB.

Resources come from ``conveyor aws init``'s code (task queue + DLQ, table,
buckets, the input bucket's upload notification to its own queue).  The API
(``conveyor serve``) and the workers (``conveyor worker``) are configured only
by seed 002's names (``AWS_REGION``, ``SQS_QUEUE_URL``, ``DYNAMODB_TABLE``,
``INPUT_BUCKET``, ``OUTPUT_BUCKET``) plus ``S3_EVENTS_QUEUE_URL``, and reach
moto through boto3's standard ``AWS_ENDPOINT_URL``.  Dummy credentials live in
the test process only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from conveyor.backends.aws import AWSBackend
from conveyor.backends.aws.provision import InitPlan, init_resources
from conveyor.errors import LeaseLost
from conveyor.models import Lease
from tests.conftest import FAST_ENV, free_port, make_clip, need_tool, start_process, wait_healthy
from tests.motoserver import REGION, require_server

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


@dataclass
class Stack:
    endpoint: str
    plan: InitPlan
    queue_url: str
    events_queue_url: str
    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen[bytes]]

    def client(self, service: str) -> Any:
        factory: Any = boto3.client
        return factory(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}),
        )

    def backend(self) -> AWSBackend:
        return AWSBackend(
            queue_url=self.queue_url,
            table=self.plan.table,
            region=REGION,
            endpoint_url=self.endpoint,
        )

    def serve(self, *, trigger: bool) -> str:
        port = free_port()
        data = self.tmp / f"api-{port}"
        data.mkdir()
        log = self.tmp / f"api-{port}.log"
        args = ["serve", "--port", str(port), "--data-dir", str(data)]
        if not trigger:
            args.append("--no-trigger")
        proc = start_process(args, data, log, self.env)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        return url

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        data = self.tmp / name
        data.mkdir()
        proc = start_process(
            ["worker", "--data-dir", str(data), "--worker-id", name],
            data,
            self.tmp / f"{name}.log",
            {**self.env, "TEMP_DIR": str(data / "tmp")},
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    need_tool("ffmpeg", "ffprobe")
    server = require_server()
    sfx = uuid.uuid4().hex[:10]
    plan = InitPlan(
        region=REGION,
        queue_name=f"conveyor-{sfx}",
        table=f"conveyor-{sfx}",
        input_bucket=f"conveyor-in-{sfx}",
        output_bucket=f"conveyor-out-{sfx}",
        events_queue_name=f"conveyor-{sfx}-upload-events",
        endpoint_url=server.endpoint,
    )
    result = init_resources(plan)
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CONVEYOR_")) and k not in ("SQS_QUEUE_URL", "DYNAMODB_TABLE")
    }
    env = {
        **inherited,
        **FAST_ENV,
        **DUMMY_CREDENTIALS,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": server.endpoint,
        "SQS_QUEUE_URL": result.queue_url,
        "DYNAMODB_TABLE": plan.table,
        "INPUT_BUCKET": plan.input_bucket,
        "OUTPUT_BUCKET": plan.output_bucket,
        "S3_EVENTS_QUEUE_URL": result.events_queue_url,
    }
    st = Stack(
        endpoint=server.endpoint,
        plan=plan,
        queue_url=result.queue_url,
        events_queue_url=result.events_queue_url,
        env=env,
        tmp=tmp_path,
        procs=[],
    )
    # start_process layers its env over os.environ: hide the test process's own
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(inherited)
    try:
        yield st
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for proc in st.procs:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _wait(predicate: Any, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout}s\n{stack.logs()}")


def test_uploads_become_one_task_each_and_are_transcoded(stack: Stack) -> None:
    url = stack.serve(trigger=True)
    stack.worker("gpu-a")
    s3 = stack.client("s3")
    sqs = stack.client("sqs")
    bucket = stack.plan.input_bucket
    clip = make_clip(stack.tmp / "clip.mp4", width=160, height=120, seconds=1.0).read_bytes()

    # a plain PUT, with a key S3 announces URL-encoded (space, non-ASCII)
    s3.put_object(Bucket=bucket, Key="uploads/plain clip 视频.mp4", Body=clip)
    # a multipart upload (ETag "<md5>-1")
    mp = s3.create_multipart_upload(Bucket=bucket, Key="uploads/multi.mov")
    part = s3.upload_part(
        Bucket=bucket, Key="uploads/multi.mov", UploadId=mp["UploadId"], PartNumber=1, Body=clip
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="uploads/multi.mov",
        UploadId=mp["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    etag = s3.head_object(Bucket=bucket, Key="uploads/multi.mov")["ETag"]
    assert etag.strip('"').endswith("-1")
    # ...which S3 may announce twice: deliver a second notification for it
    sqs.send_message(
        QueueUrl=stack.events_queue_url,
        MessageBody=json.dumps(
            {
                "Records": [
                    {
                        "eventSource": "aws:s3",
                        "eventName": "ObjectCreated:CompleteMultipartUpload",
                        "s3": {
                            "bucket": {"name": bucket},
                            "object": {
                                "key": "uploads/multi.mov",
                                "size": len(clip),
                                "eTag": etag.strip('"'),
                                "sequencer": "0062E99A88DC407460",
                            },
                        },
                    }
                ]
            }
        ),
    )
    # not a video: no task
    s3.put_object(Bucket=bucket, Key="uploads/notes.txt", Body=b"hello")

    api = httpx.Client(base_url=url, timeout=30)

    def all_done() -> list[dict[str, Any]] | None:
        tasks: list[dict[str, Any]] = api.get("/api/tasks", params={"limit": 50}).json()["tasks"]
        done = [t for t in tasks if t["status"] == "completed"]
        return tasks if len(done) >= 2 else None

    _wait(all_done, 120, "two completed tasks", stack)
    time.sleep(3.0)  # let any duplicate event be consumed
    tasks = api.get("/api/tasks", params={"limit": 50}).json()["tasks"]
    assert sorted(t["input"]["key"] for t in tasks) == [
        "uploads/multi.mov",
        "uploads/plain clip 视频.mp4",
    ], tasks
    assert {t["trigger"] for t in tasks} == {"upload"}
    assert {t["status"] for t in tasks} == {"completed"}
    for t in tasks:
        types = {o["name"] for o in t["outputs"]}
        assert types == {"mp4_standard", "mp4_smooth", "thumbnail"}, t["outputs"]
        for o in t["outputs"]:
            assert o["bucket"] == stack.plan.output_bucket
            head = s3.head_object(Bucket=o["bucket"], Key=o["key"])
            assert head["ContentLength"] > 0
    # every event handled and deleted
    left = sqs.get_queue_attributes(
        QueueUrl=stack.events_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert left == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def _processing(api: httpx.Client, task_id: str, attempt: int = 1) -> dict[str, Any] | None:
    t: dict[str, Any] = api.get(f"/api/tasks/{task_id}").json()
    busy = t["status"] == "processing" and t["attempts"] == attempt
    if busy and (t["progress"]["percent"] or 0) > 3:
        return t
    return None


def test_a_killed_worker_loses_its_task_to_another_and_exhausted_tasks_go_to_the_dlq(
    stack: Stack,
) -> None:
    url = stack.serve(trigger=False)  # runs the reaper
    api = httpx.Client(base_url=url, timeout=30)
    clip = make_clip(stack.tmp / "long.mp4", width=1280, height=720, seconds=6.0)
    r = api.put(f"/api/files/{stack.plan.input_bucket}/long.mp4", content=clip.read_bytes())
    assert r.status_code == 201, r.text
    backend = stack.backend()
    try:
        # 1. killed mid-task: the message comes back, another worker completes it once
        r = api.post(
            "/api/queue/add", json={"input_key": "long.mp4", "transcode_types": ["mp4_standard"]}
        )
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        first = stack.worker("gpu-a")
        _wait(lambda: _processing(api, task_id), 90, "gpu-a processing", stack)
        state = backend._read(task_id)
        assert state is not None and state.lease_token
        old = Lease(
            task_id=task_id,
            token=state.lease_token,
            worker_id="gpu-a",
            attempt=state.task.attempts,
            expires_at=state.task.updated_at,
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        stack.worker("gpu-b")
        t = _wait(lambda: finished_of(api, task_id), 120, "task finished by gpu-b", stack)
        assert t["status"] == "completed", t
        assert t["attempts"] == 2
        assert [h["worker_id"] for h in t["history"]] == ["gpu-a", "gpu-b"]
        assert [h["outcome"] for h in t["history"]] == ["lease_expired", "completed"]
        with pytest.raises(LeaseLost):
            backend.complete(old, [])
        assert api.get(f"/api/tasks/{task_id}").json()["outputs"] == t["outputs"]

        # 2. max_attempts=2, and the worker dies both times: failed, message in the DLQ
        doomed = api.post(
            "/api/queue/add",
            json={"input_key": "long.mp4", "transcode_types": ["mp4_standard"], "max_attempts": 2},
        ).json()["task_id"]
        for proc in list(stack.procs[1:]):
            _stop(proc)
        for n in (1, 2):
            w = stack.worker(f"doomed-{n}")
            _wait(lambda n=n: _processing(api, doomed, n), 90, f"attempt {n} running", stack)
            os.killpg(w.pid, signal.SIGKILL)
            w.wait(10)
        t = _wait(lambda: finished_of(api, doomed), 60, "doomed task finished", stack)
        assert t["status"] == "failed" and t["attempts"] == 2, t
        assert t["error_code"] == "lease_expired"
        sqs = stack.client("sqs")
        dlq = backend._dlq()
        assert dlq is not None
        bodies = [
            json.loads(m["Body"])
            for m in sqs.receive_message(
                QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
        ]
        assert [(b["task"], b["final"]) for b in bodies] == [(doomed, True)]
        assert "lease expired" in bodies[0]["reason"]
    finally:
        backend.close()


def finished_of(api: httpx.Client, task_id: str) -> dict[str, Any] | None:
    """The task once it is final and, if completed, its outputs published: the record says
    completed a moment before the worker moves the staged outputs to their final keys and
    clears their ``staged_key`` (docs/operations.md), so a read in between differs from
    every later one."""
    t: dict[str, Any] = api.get(f"/api/tasks/{task_id}").json()
    if t["status"] not in ("completed", "failed", "cancelled"):
        return None
    if any(o.get("staged_key") for o in t["outputs"]):
        return None
    return t
