# Two entry points for a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tfmmrec demo

lint: $(STAMP)
	$(BIN)/ruff check .

# The default suite runs on TEST_WORKERS processes (pytest-xdist, in the dev extra), one test file
# per worker at a time (`--dist loadfile`: module fixtures are built once, and no two tests of a
# file share a process's TF state concurrently). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile

# pytest exits 5 when it collects nothing; that must not pass silently, nor fail a `-k` run.
test: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP) lint
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info runs
