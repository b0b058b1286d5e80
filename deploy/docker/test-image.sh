#!/usr/bin/env bash
# make test-image: build the Conveyor image with no registry, run it, and use it.
#
# 1. start a Docker engine of our own (own data root, exec root, socket and
#    pid file, no bridge or iptables: it touches nothing of another engine's);
# 2. make the base image locally: debootstrap Debian from the apt mirror this
#    machine uses, `docker import` it;
# 3. build deploy/docker/Dockerfile with it as BASE_IMAGE, from wheels built
#    here (the build installs with --no-index: no package index in the build);
# 4. run the image (`conveyor up`, host network), wait for its HEALTHCHECK,
#    upload a clip, transcode it through the API, check the outputs;
# 5. check that the processes inside run as a non-root user; print the size.
#
# Needs root (dockerd, debootstrap).  Installs docker.io and debootstrap with
# apt-get when missing.  TEST_IMAGE_KEEP=1 keeps the engine's data root (and
# so the base image and build cache) for the next run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.venv/bin}
STATE=${TEST_IMAGE_STATE:-/tmp/conveyor-test-image}
SOCK=$STATE/docker.sock
DOCKER=(/usr/bin/docker -H "unix://$SOCK")
IMAGE=conveyor:test
BASE=conveyor-base:bookworm
NAME=conveyor-test-image-$$
started_dockerd=""

log() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "make test-image needs root (dockerd, debootstrap)" >&2
  exit 1
fi

missing=""
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing="$missing docker.io"
command -v debootstrap > /dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  log "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

cleanup() {
  set +e
  "${DOCKER[@]}" rm -f "$NAME" > /dev/null 2>&1
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2> /dev/null
    for _ in $(seq 1 30); do kill -0 "$started_dockerd" 2> /dev/null || break; sleep 1; done
    kill -9 "$started_dockerd" 2> /dev/null
    # dockerd leaves its network namespace (and, on some systems, its data root)
    # mounted under the state folder
    grep -o " $STATE/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2> /dev/null
    if [ "${TEST_IMAGE_KEEP:-0}" != 1 ]; then
      rm -rf "$STATE/data" "$STATE/exec"
    fi
  fi
  rm -rf "$STATE/ctx" "$STATE/rootfs" "$STATE/work"
}
trap cleanup EXIT

# -- 1. the engine ---------------------------------------------------------------
mkdir -p "$STATE"
if [ -f "$STATE/docker.pid" ] && kill -0 "$(cat "$STATE/docker.pid")" 2> /dev/null; then
  echo "a previous run's dockerd is still running: stop pid $(cat "$STATE/docker.pid") first" >&2
  exit 1
fi
rm -f "$SOCK" "$STATE/docker.pid"
log "starting dockerd (data root $STATE/data, socket $SOCK)"
/usr/sbin/dockerd \
  --data-root "$STATE/data" --exec-root "$STATE/exec" \
  -H "unix://$SOCK" --pidfile "$STATE/docker.pid" \
  --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
  > "$STATE/dockerd.log" 2>&1 &
started_dockerd=$!
for _ in $(seq 1 60); do
  "${DOCKER[@]}" version > /dev/null 2>&1 && break
  kill -0 "$started_dockerd" 2> /dev/null || { cat "$STATE/dockerd.log"; exit 1; }
  sleep 1
done
"${DOCKER[@]}" version --format 'engine {{.Server.Version}}, storage driver: '"$("${DOCKER[@]}" info --format '{{.Driver}}')"

# -- 2. the base image --------------------------------------------------------------
# the first Debian mirror and suite this machine's apt uses
read -r MIRROR SUITE < <(
  {
    grep -h -A3 '^Types: deb' /etc/apt/sources.list.d/*.sources 2> /dev/null \
      | awk '/^URIs:/{u=$2} /^Suites:/{print u, $2; exit}'
    grep -h '^deb ' /etc/apt/sources.list 2> /dev/null | awk '{print $2, $3; exit}'
  } | grep -v security | head -1
)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
if "${DOCKER[@]}" image inspect "$BASE" > /dev/null 2>&1; then
  log "base image $BASE already there (kept from an earlier run)"
else
  log "debootstrap $SUITE from $MIRROR"
  rm -rf "$STATE/rootfs"
  debootstrap --variant=minbase "$SUITE" "$STATE/rootfs" "$MIRROR" > "$STATE/debootstrap.log" 2>&1 \
    || { tail -30 "$STATE/debootstrap.log"; exit 1; }
  rm -rf "$STATE/rootfs/var/cache/apt/archives/"*.deb "$STATE/rootfs/var/lib/apt/lists/"*
  tar -C "$STATE/rootfs" -c . | "${DOCKER[@]}" import \
    -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE" > /dev/null
  rm -rf "$STATE/rootfs"
fi
"${DOCKER[@]}" image ls "$BASE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'

# -- 3. the image ---------------------------------------------------------------------
log "building wheels and $IMAGE"
rm -rf "$STATE/ctx"
mkdir -p "$STATE/ctx/deploy/docker/wheels"
cp -r pyproject.toml README.md src .dockerignore "$STATE/ctx/"
cp deploy/docker/Dockerfile "$STATE/ctx/deploy/docker/"
find "$STATE/ctx/src" -name __pycache__ -prune -exec rm -rf {} +
"$BIN/pip" wheel -q --wheel-dir "$STATE/ctx/deploy/docker/wheels" . 2>&1 | grep -v '^WARNING: Location' || true
ls "$STATE/ctx/deploy/docker/wheels"/conveyor-*.whl > /dev/null
build_start=$(date +%s)
"${DOCKER[@]}" build --network host \
  --build-arg BASE_IMAGE="$BASE" \
  -f "$STATE/ctx/deploy/docker/Dockerfile" -t "$IMAGE" "$STATE/ctx" > "$STATE/build.log" 2>&1 \
  || { tail -40 "$STATE/build.log"; exit 1; }
echo "built in $(($(date +%s) - build_start)) s"

# -- 4. run it, wait for its health check, transcode through it ------------------------
PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
log "running $IMAGE (conveyor up) on $URL"
"${DOCKER[@]}" run -d --name "$NAME" --network host \
  -e CONVEYOR_API_PORT="$PORT" -e CONVEYOR_API_HOST=127.0.0.1 \
  -e CONVEYOR_HEARTBEAT_INTERVAL=1 -e CONVEYOR_POLL_INTERVAL=0.5 \
  "$IMAGE" up > /dev/null
health=""
for _ in $(seq 1 120); do
  health=$("${DOCKER[@]}" inspect -f '{{.State.Health.Status}}' "$NAME")
  [ "$health" = healthy ] && break
  [ "$("${DOCKER[@]}" inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 1
done
if [ "$health" != healthy ]; then
  echo "container health: $health" >&2
  "${DOCKER[@]}" logs "$NAME" 2>&1 | tail -40 >&2
  exit 1
fi
echo "health check: $health"

mkdir -p "$STATE/work"
ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=25:duration=3 \
  -f lavfi -i sine=frequency=440:duration=3 -c:v libx264 -preset ultrafast -pix_fmt yuv420p \
  -c:a aac -shortest "$STATE/work/clip.mp4"
"$BIN/python" - "$URL" "$STATE/work/clip.mp4" <<'EOF'
import sys
import time

import httpx

url, clip = sys.argv[1], sys.argv[2]
c = httpx.Client(base_url=url, timeout=30)
with open(clip, "rb") as fh:
    r = c.put("/api/files/input/clip.mp4", content=fh.read())
assert r.status_code == 201, r.text
# the upload's key makes this submit and the upload trigger one task, not two
body = {"input_bucket": "input", "input_key": "clip.mp4", "idempotency_key": r.json()["upload_key"],
        "transcode_types": ["mp4_smooth", "h265_mute", "thumbnail"]}
r = c.post("/api/queue/add", json=body)
assert r.status_code == 201, r.text
task_id = r.json()["task_id"]
deadline = time.monotonic() + 300
while True:
    t = c.get(f"/api/tasks/{task_id}").json()
    if t["status"] in ("completed", "failed", "cancelled"):
        break
    assert time.monotonic() < deadline, t
    time.sleep(0.5)
assert t["status"] == "completed", t
for o in t["outputs"]:
    print(f"  {o['name']:<12} {o['key']:<32} {o['size']:>8} bytes  {o['meta'].get('encoder')}")
    got = c.get(f"/api/files/{o['bucket']}/{o['key']}")
    assert got.status_code == 200 and len(got.content) == o["size"], o
assert {o["name"] for o in t["outputs"]} == {"mp4_smooth", "h265_mute", "thumbnail"}
ready = c.get("/api/ready").json()
assert ready["status"] == "ready", ready
metrics = c.get("/metrics").text
line = 'conveyor_tasks_total{kind="transcode",outcome="completed"} 1.0'
assert line in metrics, metrics
print(f"transcoded through the image: task {task_id} completed; /metrics: {line}")
EOF

# -- 5. non-root, size --------------------------------------------------------------
"${DOCKER[@]}" top "$NAME" -eo pid,uid,user,args | cut -c1-120
uids=$("${DOCKER[@]}" top "$NAME" -eo pid,uid | awk 'NR > 1 {print $2}' | sort -u | tr '\n' ' ')
echo "uids of the processes in the container: $uids"
for uid in $uids; do
  if [ "$uid" = 0 ]; then
    echo "a process in the container runs as root" >&2
    exit 1
  fi
done
echo "inside: $("${DOCKER[@]}" exec "$NAME" id)"
size=$("${DOCKER[@]}" image inspect -f '{{.Size}}' "$IMAGE")
base_size=$("${DOCKER[@]}" image inspect -f '{{.Size}}' "$BASE")
printf 'image %s: %d MB (base %s: %d MB)\n' "$IMAGE" $((size / 1000000)) "$BASE" $((base_size / 1000000))
log "make test-image: ok"
