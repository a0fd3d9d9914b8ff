PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install dev test test-pure bench compare compare-wan stress wheel clean lint demo

install:
	$(PIP) install .

# Editable install with the compiled core built in place, plus test tools.
dev:
	$(PIP) install -e '.[test]'

# The README's test command: the project venv, linters, the suite with the
# compiled core and again with the pure-Python twin.
test:
	bash scripts/test.sh

bench:
	$(PYTHON) benchmarks/bench_core.py
	$(PYTHON) -m pytest benchmarks -q --benchmark-only -p no:cacheprovider

compare:
	$(PYTHON) benchmarks/compare.py

# Over a slow link: btsoot on sshfs, rsync over ssh, rclone over SFTP, through a
# proxy that adds the round trip (benchmarks/README.md, "wan.py").
compare-wan:
	$(PYTHON) benchmarks/wan.py --rtt-ms 20
	$(PYTHON) benchmarks/wan.py --rtt-ms 80 --files 400

stress:
	BTSOOT_STRESS=1 $(PYTHON) -m pytest -q tests/test_reliability.py tests/test_fuzz_state.py

wheel:
	$(PYTHON) -m build --wheel --outdir dist .

lint:
	$(PYTHON) -m ruff check src tests benchmarks

demo:
	bash scripts/demo.sh

clean:
	rm -rf build dist .pytest_cache .benchmarks src/*.egg-info
	rm -f src/btsoot/_fastscan.c src/btsoot/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
