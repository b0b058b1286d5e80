# Two commands for a fresh Debian/Ubuntu machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := ffmpeg

.PHONY: run test lint typecheck bench system-deps test-deps venv clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# System packages, installed with apt-get only when missing: ffmpeg for the
# workers; for the test suite also PostgreSQL (throwaway clusters) and
# Chromium (console browser tests, driven by playwright without a download),
# dockerd and a static busybox (container tests: a private engine, an image
# built offline).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	$(call apt_install,$$missing)

test-deps: system-deps
	@missing=""; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	fc-list 2>/dev/null | grep -qi "wqy\|noto.*cjk" || missing="$$missing fonts-wqy-microhei"; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v busybox >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	$(call apt_install,$$missing)

define apt_install
if [ -n "$(1)" ]; then \
  echo "Installing system packages:$(1)"; \
  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(1); \
fi
endef

run: system-deps venv
	$(BIN)/conveyor up --data-dir $(DATA)

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/cfn-lint deploy/aws/*.yaml

typecheck: venv
	$(BIN)/mypy

test: test-deps venv lint typecheck
	$(BIN)/python -m pytest -q

bench: system-deps venv
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/transcode_single_pass.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
