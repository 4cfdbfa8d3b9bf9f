# The few commands people run. `make demo` and `make test` set up .venv themselves on a fresh machine.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast lint format clean

setup: .venv/.ltxdist-setup-done

.venv/.ltxdist-setup-done: pyproject.toml setup.py scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

clean:
	rm -rf runs/tiny_demo data/synthetic-tiny checkpoints/ltx-2.3-tiny.safetensors .pytest_cache
