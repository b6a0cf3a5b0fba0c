"""The locked environment: `requirements/py<major>.<minor>.txt`, the exact version of every package
the project installs on Linux x86_64 for that Python (made by pip-tools' `pip-compile`, installed by
`make install`, refreshed on purpose by `make lock`; docs/environment.md).

Which lock applies, its sha256, and whether the installed packages are the ones it pins: recorded in
every stage's and every foundation part's provenance (benchmark/provenance.py), so a stage made under
another lock is flagged like one made by another commit.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO_ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalize(name: str) -> str:
    """PEP 503's normalised distribution name: `Pillow`, `pillow` and `PIL_low` alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(python: tuple[int, int] | None = None) -> Path:
    """The lock file of this (or the given) Python version; it may not exist (an unlocked Python)."""
    major, minor = python or sys.version_info[:2]
    return LOCK_DIR / f"py{major}.{minor}.txt"


def pins(path: str | Path) -> dict[str, str]:
    """{normalised name: version} of the `name==version` lines of a pip-compile output."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


@functools.lru_cache(maxsize=1)
def installed() -> dict[str, str]:
    """{normalised name: version} of every distribution this interpreter sees (package metadata only,
    nothing imported). The project itself is left out: its version is its commit."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) != "lsa-bench":
            out[normalize(name)] = dist.version
    return dict(sorted(out.items()))


def differences(locked: dict[str, str], present: dict[str, str]) -> list[str]:
    """`name locked (installed x)` for each pinned package whose installed version differs or is
    missing, sorted. Packages installed beyond the lock (e.g. an optional extra) are not differences."""
    return [
        f"{name} {version} (installed {present.get(name, 'none')})"
        for name, version in sorted(locked.items())
        if present.get(name) != version
    ]


@functools.lru_cache(maxsize=1)
def state() -> dict:
    """The lock of this process: `{file, sha256, matches, differs}`; `sha256` None when this Python has
    no lock file (then `matches` is False and `differs` says so)."""
    path = lock_path()
    rel = path.relative_to(REPO_ROOT).as_posix()
    if not path.is_file():
        return {"file": rel, "sha256": None, "matches": False, "differs": [f"no lock file for Python {sys.version}"]}
    why = differences(pins(path), installed())
    return {
        "file": rel,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "matches": not why,
        "differs": why,
    }


def warning(lock: dict | None = None) -> str | None:
    """One line for the log when the environment is not the lock (None when it is)."""
    lock = state() if lock is None else lock
    if lock["matches"]:
        return None
    shown = "; ".join(lock["differs"][:5]) + (
        f"; and {len(lock['differs']) - 5} more" if len(lock["differs"]) > 5 else ""
    )
    return (
        f"the installed packages are not those of {lock['file']}: {shown}. Numbers may differ from the committed "
        f"ones; `make install` installs the lock (docs/environment.md)"
    )
