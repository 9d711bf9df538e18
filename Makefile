# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean browser

# A new top-level package needs the editable install redone, like a new dependency.
$(STAMP): pyproject.toml $(wildcard */__init__.py)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required" or 0)'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.0.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/orchestrator dev $(ARGS)

test: lint browser
	$(BIN)/python -m pytest

# Browser tests drive Debian's chromium (never a downloaded one). As root, as on CI,
# it is installed when missing; otherwise say how in one line.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "the browser tests need Chromium: run 'sudo apt-get install chromium'"; exit 1; \
		fi; \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

PY_DIRS := orchestrator workflows channels rules tests bench

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy orchestrator workflows channels rules

clean:
	rm -rf $(VENV) .state
