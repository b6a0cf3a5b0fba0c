# Two commands for a fresh machine with Python and make: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The interpreter that makes the venv, and the lock of its version (docs/environment.md): the exact
# version of every package, Linux x86_64. LOCK=none installs from pyproject.toml's ranges instead.
PYTHON ?= python3
PYV := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK ?= requirements/py$(PYV).txt
# Extra pip arguments for the install (e.g. a local index); the locked versions still apply.
PIP_EXTRA ?=

.PHONY: install install-extras nuscenes lock demo reproduce test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard $(LOCK))
	@test "$(LOCK)" = none -o -f "$(LOCK)" || { echo "no lock file $(LOCK) for Python $(PYV): locked are $(wildcard requirements/py3.*[0-9].txt); use one of those Pythons (PYTHON=python3.11), make one with 'make lock PYTHONS=$(PYTHON)', or install unlocked with LOCK=none (docs/environment.md)" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(LOCK),none)
	$(PY) -m pip install -q -e '.[test]' $(PIP_EXTRA)
else
	$(PY) -m pip install -q -r $(LOCK) $(PIP_EXTRA)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
endif
	@touch $@

# The optional extras (perf: 8-bit AdamW and offload; tracking: tensorboard, wandb), locked with the rest.
install-extras: install
	$(PY) -m pip install -q -r $(basename $(LOCK))-extras.txt $(PIP_EXTRA)

# nuscenes-devkit 1.2.0 pins numpy<2 but runs on numpy 2: install it without its own pins, beside the
# locked versions of what it needs (requirements/nuscenes.in; docs/data.md).
nuscenes: install
	$(PY) -m pip install -q -r $(basename $(LOCK))-nuscenes.txt $(PIP_EXTRA)
	$(PY) -m pip install -q --no-deps nuscenes-devkit==1.2.0

# Refresh the locks on purpose (docs/environment.md says when): PYTHONS lists the interpreters to lock
# for; UPGRADE=1 takes every newest release, UPGRADE_PACKAGE="a b" those packages only.
PYTHONS ?= $(PYTHON)
lock:
	requirements/lock.sh $(PYTHONS)

demo: install
	$(PY) -m benchmark.run table=III

# The smoke Table III from an empty store into .reproduce/, every number compared with the committed
# results/smoke/table_III.json (bit for bit: docs/environment.md says under which conditions; the
# committed tables were made at 2 torch threads).
reproduce: install
	rm -rf .reproduce
	OMP_NUM_THREADS=2 $(PY) -m benchmark.run table=III store=.reproduce/runs results=.reproduce/results
	$(PY) -m benchmark.compare results/smoke/table_III.json .reproduce/results/smoke/table_III.json

# Lint and format check first (configured in pyproject.toml [tool.ruff]), then the suite.
test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

clean:
	rm -rf runs .reproduce .pytest_cache
