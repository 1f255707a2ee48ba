# remus-netbuf: every target prepares what it needs (Debian packages, .venv) itself.
PY := .venv/bin/python
SRC := remus_netbuf tests tools bench

.PHONY: all deps lint test demo bench clean
all: test

deps:
	@tools/ensure-deps

lint: deps
	.venv/bin/ruff check $(SRC)
	.venv/bin/ruff format --check $(SRC)
	.venv/bin/mypy

# The whole suite: lint, unit, native kernel and xenstore tests, and the kernel tier (sch_plug:
# Debian's kernel in QEMU, fetched once into .cache/vm, or this kernel where it has sch_plug).
test: lint
	$(PY) -m pytest --cov=remus_netbuf --cov-report=term-missing:skip-covered $(PYTEST_ARGS)

# The main job on an embedded default: a throwaway namespace, a veth guest, a private xenstore.
demo: deps
	$(PY) tools/demo.py

bench: deps
	$(PY) bench/bench.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage* .cache
