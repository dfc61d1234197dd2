# stream-tts: `make serve` (set up + run the server), `make test` (set up + run the suite).
PYTHON ?= python3
VENV   := .venv
# Pipecat (a test client of the ElevenLabs-compatible API) pins other versions than we do
# (soundfile), so it gets its own venv; tests/stream_server/api/test_elevenlabs_pipecat.py runs it
PIPECAT_VENV := .venv-pipecat
PIPECAT_VERSION := 1.14.0
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8765
ENGINE ?= auto
ARGS   ?=

.PHONY: serve test install install-test lint clean

$(VENV)/.installed: pyproject.toml
	./scripts/sysdeps.sh serve
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	./scripts/sysdeps.sh test
	$(PY) -m pip install -q -e '.[test,ray]'
	# the reference implementation, used only as a test oracle (no trainer deps)
	$(PY) -m pip install -q --no-deps f5-tts==1.1.22
	touch $@

$(PIPECAT_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(PIPECAT_VENV)/bin/python -m pip install -q "pipecat-ai==$(PIPECAT_VERSION)"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test $(PIPECAT_VENV)/.installed

serve: install
	$(PY) -m stream_server serve --host $(HOST) --port $(PORT) --engine $(ENGINE) $(ARGS)

test: install-test
	$(PY) -m pytest $(ARGS)

lint: install-test
	$(VENV)/bin/ruff check chunker engine stream_server tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) .pytest_cache build *.egg-info
