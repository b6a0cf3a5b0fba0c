"""python -m benchmark.compare EXPECTED.json ACTUAL.json [--tolerance T]

Do two table JSONs (results/<profile>/table_<N>.json) hold the same numbers? Every number of every
row is compared: the value of each cell, its interval, its paired difference to the baseline and its
marks (best / second, †), and the per-frame curves. What does not describe the result is left out:
the caption and the provenance (commit, lock, stage times) and the stage hashes. Exit 0 when equal,
1 with one line per difference. `--tolerance T` accepts numbers within T (absolute) of each other;
the default 0 asks for bit-identical floats.

`make reproduce` runs the smoke Table III into a scratch folder and compares it with the committed
results/smoke/table_III.json this way (docs/environment.md).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from data.cli import InputError, MissingFile, command

IGNORED = {"stages"}  # row.extra.stages: the stage hashes that made the row, not a result


def read_table(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such table JSON")
    try:
        doc = json.loads(path.read_text())
        rows = doc["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a table JSON of benchmark.run ({e})") from e
    return {r["name"]: r for r in rows}


def differences(expected: Any, actual: Any, tolerance: float = 0.0, where: str = "") -> list[str]:
    """One line per leaf that differs (numbers beyond `tolerance`, anything else not equal)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            if key in IGNORED:
                continue
            if key not in expected or key not in actual:
                out.append(f"{where}.{key}: only in {'actual' if key in actual else 'expected'}")
            else:
                out += differences(expected[key], actual[key], tolerance, f"{where}.{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} entries expected, {len(actual)} found"]
        return [
            d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, tolerance, f"{where}[{i}]")
        ]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        same = expected == actual or (math.isnan(expected) and math.isnan(actual))
        if same or abs(expected - actual) <= tolerance:
            return []
        return [f"{where}: {expected!r} expected, {actual!r} found"]
    return [] if expected == actual else [f"{where}: {expected!r} expected, {actual!r} found"]


def compare(expected_path: str | Path, actual_path: str | Path, tolerance: float = 0.0) -> list[str]:
    expected, actual = read_table(expected_path), read_table(actual_path)
    if list(expected) != list(actual):
        return [f"rows: {list(expected)} expected, {list(actual)} found"]
    return [d for name in expected for d in differences(expected[name], actual[name], tolerance, f"rows.{name}")]


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    tolerance = 0.0
    if "--tolerance" in argv:
        i = argv.index("--tolerance")
        try:
            tolerance = float(argv[i + 1])
        except (IndexError, ValueError) as e:
            raise InputError("--tolerance needs a number, e.g. --tolerance 1e-9") from e
        argv = argv[:i] + argv[i + 2 :]
    if len(argv) != 2:
        raise InputError("usage: python -m benchmark.compare EXPECTED.json ACTUAL.json [--tolerance T]")
    found = compare(*argv, tolerance=tolerance)
    for line in found:
        print(line)
    print(
        f"{argv[1]}: {len(found)} number(s) differ from {argv[0]}"
        if found
        else f"{argv[1]}: every number equals {argv[0]}" + (f" (tolerance {tolerance:g})" if tolerance else "")
    )
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
