# Two commands for a fresh machine with Python and make: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pip arguments, e.g. PIP_EXTRA="torch==2.14.1 torchvision==0.29.1" to pin a local build.
PIP_EXTRA ?=

.PHONY: install nuscenes demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]' $(PIP_EXTRA)
	@touch $@

# nuscenes-devkit 1.2.0 pins numpy<2 but runs on numpy 2: install it and its needs without
# downgrading the environment's numpy (docs/data.md). `pip install -e .[nuscenes]` is the other route.
nuscenes: install
	$(PY) -m pip install -q --no-deps nuscenes-devkit==1.2.0 pyquaternion descartes "shapely~=2.0.3" \
		scikit-learn joblib threadpoolctl narwhals cachetools fire termcolor parameterized

demo: install
	$(PY) -m benchmark.run table=III

# Lint and format check first (configured in pyproject.toml [tool.ruff]), then the suite.
test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto --dist loadscope --no-loadscope-reorder

clean:
	rm -rf runs .pytest_cache
