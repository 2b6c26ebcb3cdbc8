# make demo: set up .venv and run the demo on the embedded phantom data.
# make test: set up .venv and run the linter and the test suite (one pytest-xdist worker per core).
# make bench: run every benchmark (hours on 2 cores) and write benchmarks/RESULTS.md.
# Real-data tests read $SYNTHMED_TEST_DATA (e.g. ../shared/data) and are skipped without it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first, so the package install does not pull a multi-GB CUDA build.
# Elsewhere: make TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
EXTRAS ?= dev,dicom-codecs,privacy
DEMO_OUT ?= demo-out
DEMO_FLAGS ?=
BENCH_FLAGS ?=

.PHONY: install demo test bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: install
	$(BIN)/synthmed demo --out $(DEMO_OUT) --overwrite $(DEMO_FLAGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n auto --dist loadfile --durations=15

bench: install
	$(BIN)/python benchmarks/run_all.py --out bench-out $(BENCH_FLAGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-out .pytest_cache .ruff_cache
