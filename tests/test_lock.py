"""The locked environment (benchmark/lock.py, requirements/, docs/environment.md): the lock of this
Python exists, satisfies pyproject.toml, is what this environment has installed, and the parser and
the comparison read it right."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.requirements import Requirement

from benchmark import lock

LOCKED_EXTRAS = {"": "", "test": "", "perf": "-extras", "tracking": "-extras"}  # extra -> lock file suffix


def test_parse_and_compare(tmp_path):
    path = tmp_path / "py3.11.txt"
    path.write_text(
        "# pip-compile header\nNumPy==2.4.6\n    # via torch\nPillow_SIMD==13.0\ntorch==2.14.1 ; sys_platform == 'linux'\n"
    )
    pins = lock.pins(path)
    assert pins == {"numpy": "2.4.6", "pillow-simd": "13.0", "torch": "2.14.1"}
    assert lock.differences(pins, {"numpy": "2.4.6", "pillow-simd": "13.0", "torch": "2.14.1", "extra": "1"}) == []
    assert lock.differences(pins, {"numpy": "2.4.5", "torch": "2.14.1"}) == [
        "numpy 2.4.6 (installed 2.4.5)",
        "pillow-simd 13.0 (installed none)",
    ]


@pytest.mark.parametrize("extra", sorted(LOCKED_EXTRAS))
def test_lock_satisfies_pyproject(extra):
    """Every requirement of pyproject.toml (as installed: the project's metadata) is pinned by this
    Python's lock to a version its specifier accepts; a dependency added without `make lock` fails."""
    path = lock.lock_path().with_name(lock.lock_path().stem + LOCKED_EXTRAS[extra] + ".txt")
    assert path.is_file(), f"{path}: no lock for this Python; `make lock` makes it (docs/environment.md)"
    pins = lock.pins(path)
    for text in metadata.requires("lsa-bench") or []:
        req = Requirement(text)
        wanted = req.marker is None or req.marker.evaluate({"extra": extra})
        if not wanted or (req.marker is not None and extra == "" and "extra" in str(req.marker)):
            continue
        name = lock.normalize(req.name)
        assert name in pins, f"{path.name}: {req} is not locked; run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{path.name}: {name}=={pins[name]} breaks {req}"


def test_this_environment_is_the_lock():
    """`make install` (and so CI) installs exactly the lock: the committed numbers depend on it."""
    state = lock.state()
    assert state["sha256"], state["differs"]
    assert state["matches"], f"installed packages differ from {state['file']}: {state['differs'][:10]}; `make install`"
    assert lock.warning(state) is None


def test_unmatched_environment_is_named():
    text = lock.warning(
        {"file": "requirements/py3.11.txt", "matches": False, "differs": [f"p{i} 1 (installed 2)" for i in range(7)]}
    )
    assert text.startswith("the installed packages are not those of requirements/py3.11.txt: p0 1 (installed 2);")
    assert "and 2 more" in text and "make install" in text
