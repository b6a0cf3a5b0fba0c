"""Seeds, intervals and marks in the tables (benchmark.seeds, benchmark.intervals, benchmark/intervals.py)
on the FakeRunner: seeds expand into their own stages shared within a seed, the JSON keeps every seed's
value, cells read value ± half-width or mean ± std, and the dagger follows the paired interval."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fakes import FakeRunner

from ablations.registry import load_table
from benchmark.config import HydraResolver
from benchmark.run_table import run_table
from benchmark.stages import expand
from data.cli import UserError


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


def _by_kind(graph, plans):
    out = {}
    for p in plans:
        for h in [p.testset, *p.train, p.generate, *p.evaluate.values()]:
            out.setdefault(graph.stages[h].kind, set()).add(h)
    return out


def test_seeds_expand_to_their_own_stages_shared_within_a_seed(smoke):
    spec = load_table("III")
    one = expand(spec, smoke)
    two = expand(spec, HydraResolver("smoke", ["benchmark.seeds=[0,1]"]))
    assert [(p.row.name, p.seed) for p in two.rows] == [(r.name, s) for r in spec.rows for s in (0, 1)]
    seed0 = _by_kind(two, [p for p in two.rows if p.seed == 0])
    seed1 = _by_kind(two, [p for p in two.rows if p.seed == 1])
    # seed 0 is the one-seed run: the very same stages
    assert seed0 == _by_kind(one, one.rows)
    # seed 1: the same test set, everything else its own, and as much sharing within it as seed 0
    assert seed1["testset"] == seed0["testset"]
    for kind in ("train", "generate", "evaluate"):
        assert not seed1[kind] & seed0[kind] and len(seed1[kind]) == len(seed0[kind]), kind
    epoch1 = {p.train[0] for p in two.rows if p.seed == 1}
    assert len(epoch1) == 1  # every row of seed 1 shares its epoch 1
    assert two.stages[epoch1.pop()].rows == [f"{r.name} (seed 1)" for r in spec.rows]
    # what seed 1 changes: train.seed + 1, generation seeds + seed_stride
    p0, p1 = (next(p for p in two.rows if p.row.name == "hybrid" and p.seed == s) for s in (0, 1))
    assert p1.cfg["train"]["seed"] == p0.cfg["train"]["seed"] + 1
    assert p1.cfg["benchmark"]["generate"]["seed"] == (
        p0.cfg["benchmark"]["generate"]["seed"] + p0.cfg["benchmark"]["seed_stride"]
    )


@pytest.mark.parametrize("bad", ["[0,0]", "[-1]", "['a']"])
def test_bad_seeds_are_user_errors(bad):
    with pytest.raises(UserError, match="benchmark.seeds"):
        expand(load_table("III"), HydraResolver("smoke", [f"benchmark.seeds={bad}"]))


def test_a_table_over_seeds_shows_mean_and_std_and_keeps_every_seed(tmp_path):
    runner = FakeRunner()
    run = run_table(
        "III",
        HydraResolver("smoke", ["benchmark.seeds=[0,1,2]"]),
        runner,
        store=tmp_path / "runs",
        results=tmp_path / "res",
        rows=["svd_finetuned", "hybrid"],
        echo=lambda s: None,
        figures=False,
    )
    assert runner.calls["testset"] == 1 and runner.calls["generate"] == 6 and runner.calls["evaluate"] == 6
    doc = json.loads(run.outputs["json"].read_text())
    hybrid = next(r for r in doc["rows"] if r["name"] == "hybrid")["cells"]["map"]
    values = hybrid["seeds"]["values"]
    assert hybrid["seeds"]["seeds"] == [0, 1, 2] and len(set(values)) == 3
    assert hybrid["ours"] == pytest.approx(np.mean(values))
    assert hybrid["ours_text"].startswith(f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}")
    assert [s["seed"] for s in hybrid["per_seed"]] == [0, 1, 2] and all(s["interval"] for s in hybrid["per_seed"])
    marked = all(s["diff"]["low"] > 0 for s in hybrid["per_seed"]) or all(
        s["diff"]["high"] < 0 for s in hybrid["per_seed"]
    )
    assert hybrid["significant"] == marked and hybrid["ours_text"].endswith("†") == marked
    assert "mean ± standard deviation over 3 seeds (0, 1, 2" in doc["caption"]


def test_intervals_marks_switch_and_cache(tmp_path):
    kw = {
        "store": tmp_path / "runs",
        "rows": ["svd_finetuned", "global", "hybrid"],
        "echo": lambda s: None,
        "figures": False,
    }
    run = run_table("III", HydraResolver("smoke"), FakeRunner(), results=tmp_path / "a", **kw)
    doc = json.loads(run.outputs["json"].read_text())
    md, tex = run.outputs["md"].read_text(), run.outputs["tex"].read_text()
    rows = {r["name"]: r["cells"] for r in doc["rows"]}
    base = rows["svd_finetuned"]["map"]
    assert base["diff"] is None and base["baseline"] is None and not base["significant"]
    assert base["ours_text"] == f"{base['ours']:.2f} ± {base['interval']['half_width']:.2f}"
    for name in ("global", "hybrid"):
        for col in ("map", "miou"):
            cell = rows[name][col]
            assert cell["baseline"] == "svd_finetuned" and cell["interval"]["n_resamples"] == 50
            assert cell["interval"]["low"] <= cell["interval"]["high"]
            assert cell["diff"]["value"] == pytest.approx(cell["ours"] - rows["svd_finetuned"][col]["ours"])
            excl = cell["diff"]["low"] > 0 or cell["diff"]["high"] < 0
            assert cell["significant"] == excl and cell["ours_text"].endswith("†") == excl
    assert "±" in md and r"$\pm$" in tex and "paired bootstrap interval" in doc["caption"]
    cached = sorted(p.name for p in (tmp_path / "runs" / ".bootstrap").iterdir())
    assert cached
    # the paper's style: no ± and no mark in md / tex; the JSON keeps the intervals; the cache is reused
    run = run_table(
        "III", HydraResolver("smoke", ["benchmark.intervals=false"]), FakeRunner(), results=tmp_path / "b", **kw
    )
    doc_b = json.loads(run.outputs["json"].read_text())
    md_b, tex_b = run.outputs["md"].read_text().split("\n", 1)[1], run.outputs["tex"].read_text()
    assert "±" not in md_b and "†" not in md_b and r"\pm" not in tex_b.split(r"\midrule")[1]
    hybrid_b = next(r for r in doc_b["rows"] if r["name"] == "hybrid")["cells"]["map"]
    assert (
        hybrid_b["ours_text"] == f"{hybrid_b['ours']:.2f}" and hybrid_b["interval"] == rows["hybrid"]["map"]["interval"]
    )
    assert sorted(p.name for p in (tmp_path / "runs" / ".bootstrap").iterdir()) == cached
