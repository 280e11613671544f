# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch pinned and installed first: this release has a CPU wheel on the build machines, and an
# unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_DB ?= demo-out/events.db

.PHONY: demo serve test lint format bench bench-p1 clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record which install ran, so a changed pyproject.toml reinstalls.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[deep]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[dev,deep,text]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/lifelong-rec demo --db $(DEMO_DB)

# The HTTP service on the demo's event log (made by the demo if it is not there yet):
# OpenAPI docs at http://127.0.0.1:8000/docs. Run `. .venv/bin/activate` to call
# lifelong-rec yourself.
$(DEMO_DB): | $(VENV)/.installed
	$(BIN)/lifelong-rec demo --db $(DEMO_DB)

serve: $(VENV)/.installed | $(DEMO_DB)
	$(BIN)/lifelong-rec serve --db $(DEMO_DB)

# The dashboard's browser tests (tests/test_ui.py) drive Debian's chromium: installed here when
# missing (as root, with apt-get); without it they are skipped, saying so in one line.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } \
	      || echo "chromium could not be installed: the browser tests (tests/test_ui.py) will be skipped"; \
	  else \
	    echo "no apt-get to install chromium with: the browser tests (tests/test_ui.py) will be skipped"; \
	  fi; }

# PostgreSQL tests run with LIFELONG_REC_TEST_POSTGRES=postgresql://... set (.ci/run sets it).
test: $(VENV)/.installed-dev chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -e ".[dev,deep,text,bench]"
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/eventlog.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/p2.py
	$(BIN)/python bench/coldstart.py
	$(BIN)/python bench/p1.py --workers 2

# The headline benchmark alone (P1 on ML-100K and ML latest-small; the transformer's runs,
# retrain@10 above all, make it take about two hours on two cores).
bench-p1: $(VENV)/.installed-bench
	$(BIN)/python bench/p1.py --workers 2

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache build *.egg-info src/*.egg-info
