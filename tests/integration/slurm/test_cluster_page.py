"""The console's cluster page, read from the real cluster: partitions, nodes and their
state, GPUs free, and the jobs Conveyor has in Slurm (one running, one waiting with
Slurm's reason), in English and Chinese; a submitter sees no one's jobs."""

from __future__ import annotations

import re
import time

from tests.integration.slurm.conftest import Site


def _row(html: str, attr: str, value: str) -> str:
    m = re.search(rf'<tr {attr}="{re.escape(value)}"[^>]*>(.*?)</tr>', html, re.S)
    assert m, f"no row {attr}={value}"
    return " ".join(re.sub(r"<[^>]+>", " ", m.group(0)).split())


def test_the_cluster_page_shows_partitions_nodes_gpus_and_conveyors_jobs(site: Site) -> None:
    site.executor()
    running = site.container(["sleep", "60"])
    waiting = site.container(["true"], cpus=64)
    run_job = site.job_of(running)
    wait_job = site.job_of(waiting, state="PD")
    deadline = time.monotonic() + 20
    while True:
        with site.admin as c:
            r = c.get("/admin/cluster")
        assert r.status_code == 200, r.text
        html = r.text
        if "PartitionConfig" in html and "slurm-exec" in html:
            break
        assert time.monotonic() < deadline, html
        time.sleep(1)
    print()
    for attr, value in (
        ("data-partition", "debug"),
        ("data-partition", "gpu"),
        ("data-node", "node1"),
        ("data-node", "gpunode"),
        ("data-job", run_job["id"]),
        ("data-job", wait_job["id"]),
    ):
        print(_row(html, attr, value))
    assert "(default)" in _row(html, "data-partition", "debug")
    assert 'data-gpus-free="0"' in html and "0 / 2" in _row(html, "data-partition", "gpu")
    assert 'data-node="gpunode" data-available="no"' in html
    assert "DOWN" in _row(html, "data-node", "gpunode") and "off" in _row(
        html, "data-node", "gpunode"
    )
    assert 'data-node="node1" data-available="yes"' in html
    assert "RUNNING" in _row(html, "data-job", run_job["id"])
    assert f'data-task="{running}"' in html and f'href="/admin/tasks/{running}"' in html
    pending = _row(html, "data-job", wait_job["id"])
    assert "PENDING" in pending and "PartitionConfig" in pending
    assert 'href="/admin/cluster"' in html  # in the nav
    with site.api.client(site.api.admin, cookies={"lang": "zh-CN"}) as c:
        zh = c.get("/admin/cluster").text
    assert "Slurm 集群" in zh and "空闲 GPU" in zh
    submitter = site.api.token("alice", "submitter")
    with site.api.client(submitter) as c:
        own = c.get("/admin/cluster").text
    assert "data-job=" not in own and 'data-node="node1"' in own
    with site.admin as c:
        for task_id in (running, waiting):
            c.post(f"/api/tasks/{task_id}/cancel")
