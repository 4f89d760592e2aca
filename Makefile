# Tollway: `make run` starts the gateway on embedded defaults; `make test` runs the whole suite.
# Both create .venv and install what they need (hash-pinned lock, falling back to pyproject ranges
# on a Python the lock was not compiled for).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-smoke lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tollway needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock \
	  || (echo "lock did not install on this Python; installing from pyproject ranges" && \
	      $(BIN)/python -m pip install --quiet -e '.[dev]')
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

run: install
	TOLLWAY_SIMULATOR=$${TOLLWAY_SIMULATOR:-on} \
	TOLLWAY_DEV_KEY=$${TOLLWAY_DEV_KEY:-tollway-dev-key} \
	TOLLWAY_ADMIN_KEY=$${TOLLWAY_ADMIN_KEY:-tollway-admin-key} \
	TOLLWAY_SIM_TTFT_MS=$${TOLLWAY_SIM_TTFT_MS:-150} \
	TOLLWAY_SIM_TOKENS_PER_SECOND=$${TOLLWAY_SIM_TOKENS_PER_SECOND:-80} \
	$(BIN)/tollway serve

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m bench.run

bench-smoke: install
	$(BIN)/python -m bench.run --smoke

# Recompile the hash-pinned locks (no index URLs are written into them): runtime.lock installs the
# Docker image, dev.lock (runtime + dev tools) the development venv and CI.
# The runtime lock is compiled under the dev lock's versions, so the image runs what the tests ran.
lock:
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --extra dev --strip-extras -o requirements/dev.lock pyproject.toml
	sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\) \\$$/\1/p' requirements/dev.lock > $(VENV)/dev-pins.txt
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links \
	  --extra build --strip-extras -c $(VENV)/dev-pins.txt -o requirements/runtime.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tollway.db var
