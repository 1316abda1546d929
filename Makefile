# Two commands on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MODEL  ?= models:/heimdall-localizer@production
PORT   ?= 3000
export BENTOML_DO_NOT_TRACK := true

.PHONY: serve test lint model bench compare load build release podman base-image browser map-screenshot clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Register the committed reference model in the local MLflow registry and import
# it into the BentoML store; both steps are no-ops when already done.
model: $(VENV)/.installed
	$(BIN)/heimdall register
	$(BIN)/heimdall import $(MODEL)

serve: model
	$(BIN)/bentoml serve service:Heimdall --port $(PORT)

test: $(VENV)/.installed
	$(BIN)/pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# Debian's chromium and its chromedriver, for the map page's browser test (root; waits for apt's lock).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver; }

# Photographs the map page as its browser test leaves it: docs/map.png.
map-screenshot: $(VENV)/.installed browser
	MAP_SCREENSHOT=$(CURDIR)/docs/map.png $(BIN)/pytest tests/test_map_page.py -q

bench: model
	$(BIN)/python load/bench.py

# The service against plain FastAPI and LitServe apps doing the same work (issue 16).
# Needs wrk (Debian's package; installed here when missing, as root).
COMPARE_ARGS ?=
compare: model
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	command -v wrk >/dev/null || { apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq wrk; }
	$(BIN)/python load/compare.py $(COMPARE_ARGS)

# Registry model -> versioned Bento -> image, built on BASE_IMAGE whenever docker or podman can
# run it (`make base-image` builds the default here; BASE_IMAGE= uses BentoML's python:3.11-slim).
BASE_IMAGE ?= localhost/heimdall-base:bookworm
release: model
	$(BIN)/heimdall release $(MODEL) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

# podman from Debian's packages, set up for a machine without a container daemon or systemd.
podman:
	deploy/podman/setup.sh

# The Debian bookworm + Python 3.11 base image, built with debootstrap (no image registry needed).
base-image: podman
	HEIMDALL_BASE_IMAGE=$(BASE_IMAGE) deploy/podman/base-image.sh

# Locust SLA check: starts the service and a private Redis, 100 users at ~1 request/s each,
# reports in load/reports/. Saturation: make load LOAD_ARGS=--saturate
LOAD_ARGS ?=
load: model
	$(BIN)/python load/sla.py --redis $(LOAD_ARGS)

clean:
	rm -rf $(VENV) .heimdall
