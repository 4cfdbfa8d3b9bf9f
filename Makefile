# The few commands people run. `make demo` and `make test` set up .venv themselves on a fresh machine.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast soak lint format lock clean docs

setup: .venv/.ltxdist-setup-done

.venv/.ltxdist-setup-done: pyproject.toml constraints.txt scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

demo: setup
	bash scripts/demo.sh

# Two pytest workers (pytest-xdist): most tests wait on single-threaded subprocesses, so two run side by
# side on 2 cores; --dist loadfile keeps each file's module fixtures (multi-process runs) on one worker.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

# The fault battery's soak (RELIABILITY.md): random SIGKILLs, preemption signals, full disk, a hung rank,
# NaN bursts, a vanished shard, and fuzzing with many examples; ~15 min on 2 cores. Writes its summary
# to runs/soak/soak_results.json (LTXDIST_SOAK_RESULTS); SOAK_SEED=n repeats a run's kill points.
soak: setup
	LTXDIST_SOAK=1 $(PY) -m pytest -q tests/faults

# Refresh constraints.txt (the lock setup installs from): newest versions pyproject.toml allows, resolved
# into a throw-away .venv-lock, written only if the whole test suite passes there. Commit the result.
lock:
	bash scripts/lock.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

# docs/configuration.md from the typed schema (tests/test_config_reference.py fails while it is stale).
docs: setup
	$(PY) -m ltxdist.config.reference

clean:
	rm -rf runs/tiny_demo data/synthetic-tiny checkpoints/ltx-2.3-tiny.safetensors .pytest_cache
