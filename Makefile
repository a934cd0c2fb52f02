# Two commands: `make demo` runs a live local cluster, `make test` runs every test.
# Both bootstrap what they need: Debian packages (when root), a .venv, Python packages.

# Debian's own interpreter when there is one (3.11+): built with PGO and LTO and a static
# libpython, it runs the router's Python ~8-30 % faster than a default source build
# (pyenv's, --enable-shared, no PGO). Override with `make PYTHON=...`.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 4

.PHONY: demo test lint typecheck unit bootstrap clean

demo: $(STAMP)
	$(BIN)/hakit demo

test: $(STAMP) lint typecheck
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests/unit

bootstrap: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap-debian.sh scripts/debian-packages.txt
	bash scripts/bootstrap-debian.sh
	$(PYTHON) -m venv --clear $(VENV)  # --clear: a venv of another interpreter is replaced, not patched
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
