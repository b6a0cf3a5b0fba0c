"""python -m benchmark.compare (benchmark/compare.py): every number of two table JSONs, nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from benchmark.compare import main

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "smoke" / "table_III.json"


def _write(tmp_path: Path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_equal_numbers_pass_and_volatile_fields_are_ignored(tmp_path, capsys):
    doc = json.loads(COMMITTED.read_text())
    other = copy.deepcopy(doc)
    other["caption"] = "another commit, another time"
    other["provenance"] = {"commits": [{"commit": "0" * 40, "dirty": True}]}
    for row in other["rows"]:
        row["extra"]["stages"] = {"generate": "ffffffffffff"}
    assert main([str(COMMITTED), _write(tmp_path, "b.json", other)]) == 0
    assert "every number equals" in capsys.readouterr().out


def test_one_changed_bit_is_named(tmp_path, capsys):
    doc = json.loads(COMMITTED.read_text())
    row = doc["rows"][1]
    other = copy.deepcopy(doc)
    value = row["cells"]["map"]["diff"]["high"]
    other["rows"][1]["cells"]["map"]["diff"]["high"] = value + abs(value) * 1e-15 + 1e-300
    other["rows"][0]["cells"]["map"]["ours_text"] += "†"
    b = _write(tmp_path, "b.json", other)
    assert main([str(COMMITTED), b]) == 1
    out = capsys.readouterr().out
    assert f"rows.{row['name']}.cells.map.diff.high: {value!r} expected" in out
    assert f"rows.{doc['rows'][0]['name']}.cells.map.ours_text" in out and "2 number(s) differ" in out
    # within a stated tolerance the float passes; the mark still differs
    assert main([str(COMMITTED), b, "--tolerance", "1e-9"]) == 1
    assert "1 number(s) differ" in capsys.readouterr().out


def test_other_rows_and_bad_files_are_errors(tmp_path, capsys):
    doc = json.loads(COMMITTED.read_text())
    fewer = {**doc, "rows": doc["rows"][:-1]}
    assert main([str(COMMITTED), _write(tmp_path, "b.json", fewer)]) == 1
    assert "rows: [" in capsys.readouterr().out
    assert main([str(COMMITTED), str(tmp_path / "absent.json")]) == 2
    (tmp_path / "junk.json").write_text("{not json")
    assert main([str(COMMITTED), str(tmp_path / "junk.json")]) == 2
    err = capsys.readouterr().err
    assert "absent.json: no such table JSON" in err and "junk.json: not a table JSON" in err
