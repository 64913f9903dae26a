# Everything installs itself: a virtualenv in .venv from PyPI, the Kafka broker jars and the
# Schema Registry (Apicurio) from Maven Central, cached in ~/.cache/knock-sink. Nothing needs to
# be installed by hand beyond Python 3.11+, Java 17+ (21+ for the registry 3.x) and Maven.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint chaos bench emulator clean fuzz

# PYTHONWARNINGS: setuptools' notice on every editable install ("be careful with folders in
# your working directory with the same name as your package"), which pip shows despite --quiet.
QUIET_INSTALL := PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(BIN)/pip install --quiet

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(QUIET_INSTALL) -e '.[test,bench,lint]'
	touch $@

setup: $(STAMP)
	deploy/local/kafka fetch >/dev/null
	deploy/local/registry fetch >/dev/null

## demo: local broker + local Knock API + sample events + the sink; prints the users
demo: setup
	$(BIN)/knock-sink demo

## demo-avro: the demo with Avro events too, through a local Schema Registry (Java 21+)
.PHONY: demo-avro
demo-avro: setup
	$(BIN)/knock-sink demo --avro

## test: the whole suite (unit, emulator, integration, shortened chaos) on a real broker
test: setup
	$(BIN)/python -m pytest

## lint: formatting, lint rules and strict typing (the versions pinned in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff format --check consumer tests bench deploy
	$(BIN)/ruff check consumer tests bench deploy
	$(BIN)/mypy consumer

## test-fast: pure-logic unit tests only (no broker, no server)
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/test_events.py tests/test_mapping.py tests/test_plan.py \
	    tests/test_tracker.py tests/test_policy.py tests/test_knock.py tests/test_apply.py \
	    tests/test_errors.py tests/test_layout.py tests/test_backlog.py

## chaos: the full-length fault-injection runs (long)
chaos: setup
	KNOCK_SINK_CHAOS_FULL=1 $(BIN)/python -m pytest -m chaos -s

## bench: the performance comparison (see docs/performance.md)
bench: setup
	$(BIN)/python -m bench.run

## fuzz: decode -> events -> mapping under atheris, $(FUZZ_RUNS) inputs (see docs/development.md, Fuzzing)
FUZZ_RUNS ?= 2000000
fuzz: $(STAMP)
	$(QUIET_INSTALL) -e '.[fuzz]'
	mkdir -p .fuzz-artifacts
	$(BIN)/python tests/fuzz.py -atheris_runs=$(FUZZ_RUNS) -max_len=2048 -print_final_stats=1 \
	    -artifact_prefix=.fuzz-artifacts/

## emulator: serve the local Knock-compatible API on :8080
emulator: $(STAMP)
	$(BIN)/knock-sink emulator --port 8080

clean:
	rm -rf $(VENV) .pytest_cache

## deploy-check: lint and validate deploy/ (Dockerfile, compose, Helm chart) without a container engine
.PHONY: deploy-check
deploy-check:
	deploy/check

## docs: regenerate docs/reference/ from the code (settings, metrics, command line)
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python -m consumer.docs
