#!/usr/bin/env bash
# Refresh the lock files (docs/environment.md): for each Python interpreter given, pip-tools'
# `pip-compile` resolves pyproject.toml into exact versions for Linux x86_64 and that Python:
#   requirements/py<X.Y>.txt           the project's dependencies + the `test` extra (`make install`)
#   requirements/py<X.Y>-extras.txt    + the `perf` and `tracking` extras (`make install-extras`)
#   requirements/py<X.Y>-nuscenes.txt  requirements/nuscenes.in: what `make nuscenes` installs beside
#                                      nuscenes-devkit (itself installed without its numpy<2 pin)
# The extras files are constrained by py<X.Y>.txt, so every package they share has the same version.
# pip-compile keeps every version already in a lock unless told otherwise:
#   requirements/lock.sh PYTHON...                       re-resolve after a pyproject.toml change
#   UPGRADE=1 requirements/lock.sh PYTHON...             every package to its newest release
#   UPGRADE_PACKAGE="transformers accelerate" requirements/lock.sh PYTHON...   those only
# A lock file that does not exist yet for a Python starts from the py3.11 lock's versions of the
# libraries that shape the numbers (SEEDED), so the locks of all Pythons agree on those.
set -euo pipefail
cd "$(dirname "$0")/.."

PIP_TOOLS="pip==26.3 pip-tools==7.7.0"   # the locker itself is pinned too
SEEDED="torch|torchvision|diffusers|transformers|accelerate|peft|torchmetrics|ultralytics|numpy|pillow|scipy"
[ "$#" -gt 0 ] || set -- python3

flags=(--quiet --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host --newline lf)
[ "${UPGRADE:-0}" = 1 ] && flags+=(--upgrade)
for p in ${UPGRADE_PACKAGE:-}; do flags+=(--upgrade-package "$p"); done

for python in "$@"; do
  v=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  tools=".venv-lock-$v"
  if [ ! -x "$tools/bin/pip-compile" ]; then
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install -q $PIP_TOOLS
  fi
  lock="requirements/py$v.txt"
  [ -f "$lock" ] || { [ -f requirements/py3.11.txt ] && grep -E "^($SEEDED)==" requirements/py3.11.txt > "$lock" || true; }
  echo "locking for Python $v -> $lock"
  "$tools/bin/pip-compile" "${flags[@]}" --extra test -o "$lock" pyproject.toml
  "$tools/bin/pip-compile" "${flags[@]}" --extra test --extra perf --extra tracking -c "$lock" \
    -o "requirements/py$v-extras.txt" pyproject.toml
  "$tools/bin/pip-compile" "${flags[@]}" -c "$lock" -o "requirements/py$v-nuscenes.txt" requirements/nuscenes.in
done
