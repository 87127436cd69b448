# The two set-up-free entry points: `make demo` and `make test`.
# Each creates .venv and installs the project into it on first use (idempotent, stamp file).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,dicom]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mrfound demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m ruff check mrfound tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check mrfound tests benchmarks

clean-venv:
	rm -rf $(VENV)
