# make test: set up .venv (torch CPU pin first, then gmptl with every extra) and run the tests.
# make demo: set up and run the embedded default.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gmptl-installed
export HF_HUB_OFFLINE := 1

.PHONY: setup test test-fast tts demo bench clean

setup: $(STAMP)

# torch is installed before the package: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The demo's synthetic corpus is spoken by espeak-ng, from the Debian/Ubuntu registry when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tts:
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; }

demo: setup tts
	$(PY) demo/run.py

# Speed and memory figures (bench/README.md) into bench/results.json; needs ../shared/data/ravdess.
bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
