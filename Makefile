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
# The router's per-request modules compiled with mypyc (hakit/router/native.py); rebuilt when a
# router source changes (native.py, which lists them, included). The router falls back to
# pure Python without a fresh build.
NATIVE := src/hakit/router/_compiled/manifest.json

.PHONY: demo test lint typecheck unit bootstrap native clean

demo: $(STAMP) $(NATIVE)
	$(BIN)/hakit demo

# HAKIT_EXPECT_COMPILED: tests/unit/router/test_native.py fails if the router is not the compiled one.
# --max-worker-restart=0: a crashed worker ends the run, reported. Restarted, it makes
# pytest-xdist 3.8's loadgroup scheduler wait forever for work it lost (xdist #1323/#1378).
# The multi-host tests (three etcd members, two hosts, routers, each with 3 s leases) run
# after the rest, alone: beside three busy workers on two cores their hosts' timings
# would be those of an overloaded machine, not of hakit.
test: $(STAMP) $(NATIVE) lint typecheck
	HAKIT_EXPECT_COMPILED=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup --max-worker-restart=0 -m "not multihost"
	HAKIT_EXPECT_COMPILED=1 $(BIN)/pytest -m multihost

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests/unit

bootstrap: $(STAMP)

native: $(NATIVE)

$(NATIVE): $(STAMP) $(wildcard src/hakit/router/*.py) scripts/build_native.py
	$(BIN)/python scripts/build_native.py

$(STAMP): pyproject.toml scripts/bootstrap-debian.sh scripts/debian-packages.txt
	bash scripts/bootstrap-debian.sh
	$(PYTHON) -m venv --clear $(VENV)  # --clear: a venv of another interpreter is replaced, not patched
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build/native src/hakit/router/_compiled
