# Every target creates and uses .venv on its own: a fresh clone needs only python3, npm and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
RESTATE_VERSION := 1.7.12
RESTATE_SERVER := $(TOOLS)/restate-server-$(RESTATE_VERSION)/bin/restate-server

.PHONY: all venv peers test test-fast lint bench demo soak compose-test clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# restate-server is the reference peer; npm carries the Linux binary.
$(RESTATE_SERVER):
	mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent @restatedev/restate-server-linux-x64@$(RESTATE_VERSION)
	rm -rf $(TOOLS)/restate-server-$(RESTATE_VERSION) && mkdir -p $(TOOLS)/restate-server-$(RESTATE_VERSION)
	tar xzf $(TOOLS)/npm/restatedev-restate-server-linux-x64-$(RESTATE_VERSION).tgz \
		-C $(TOOLS)/restate-server-$(RESTATE_VERSION) --strip-components=1
	chmod +x $@
	$@ --version

peers: venv $(RESTATE_SERVER)

test: peers
	SLUICE_RESTATE_SERVER=$(abspath $(RESTATE_SERVER)) $(PY) -m pytest -q --durations=25

# The reliability suite's long variant (about an hour): more records, kills and programs.
soak: peers
	SLUICE_SOAK=1 SLUICE_RESTATE_SERVER=$(abspath $(RESTATE_SERVER)) $(PY) -m pytest -q \
		--timeout 3600 tests/reliability

# docker-compose.yml for real, with podman (also part of `make test`; README, "Containers").
compose-test: venv
	$(PY) -m pytest -q tests/packaging/test_compose_run.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Kafka in, durable handlers, results out: a local Tansu unless KAFKA_BOOTSTRAP_SERVERS is set.
demo: venv
	$(PY) -m examples.demo

bench: peers
	SLUICE_RESTATE_SERVER=$(abspath $(RESTATE_SERVER)) $(PY) -m bench
	SLUICE_RESTATE_SERVER=$(abspath $(RESTATE_SERVER)) $(PY) -m bench.kafka_ingest

clean:
	rm -rf $(VENV) $(TOOLS) sluice-data
