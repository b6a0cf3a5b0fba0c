"""Table VI (ours, not in the paper): LSA on the LTX-Video backbone. The spec, the smoke profile's
stand-in model, and the whole benchmark path on the fake runner (the real runner: docs/backbones.md)."""

from __future__ import annotations

import json
import os

import pytest

from ablations.registry import SpecError, load_table, parse_spec


def test_spec_has_no_paper_numbers_and_says_so():
    spec = load_table("VI")
    assert not spec.in_paper and [r.name for r in spec.rows] == ["ltx_finetuned", "ltx_lsa_hybrid", "ltx_lsa_global"]
    assert all(r.paper == {} for r in spec.rows)
    assert spec.overrides["model"] == "ltx"
    assert load_table("III").in_paper  # the paper's tables are unchanged


def test_a_table_not_in_the_paper_refuses_paper_numbers(tmp_path):
    text = (
        load_table("VI")
        .path.read_text()
        .replace(
            "overrides: {schedule: diffusion, adapter: unet}",
            "overrides: {schedule: diffusion, adapter: unet}\n    paper: {fvd: '1', fid: '1', map: '1', miou: '1'}",
        )
    )
    bad = tmp_path / "table_VI.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError, match="in_paper: false"):
        parse_spec(bad)


def _graph(*user):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmark.config import HydraResolver
    from benchmark.stages import expand

    return expand(load_table("VI"), HydraResolver("smoke", list(user)))


def test_smoke_stands_in_the_tiny_ltx_at_nine_frames():
    graph = _graph()
    cfgs = [p.cfg for p in graph.rows]
    assert {c["model"]["name"] for c in cfgs} == {"ltx-tiny"}
    assert {c["model"]["backbone"] for c in cfgs} == {"ltx"} and {c["data"]["clip_len"] for c in cfgs} == {9}
    kinds = sorted(s.kind for s in graph.stages.values())
    # one shared diffusion-only epoch 1, then one epoch 2 per row
    assert kinds.count("train") == 4 and kinds.count("generate") == 3 and kinds.count("testset") == 1
    # the command line's own keys win over the stand-in
    assert {p.cfg["data"]["clip_len"] for p in _graph("data.clip_len=5").rows} == {5}


def test_table_VI_end_to_end_with_the_fake_runner(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fakes import FakeRunner

    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table

    run_table(
        "VI",
        HydraResolver("smoke"),
        FakeRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "res",
        echo=lambda s: None,
        figures=False,
    )
    out = tmp_path / "res" / "smoke-fake"
    doc = json.loads((out / "table_VI.json").read_text())
    assert "not in the paper" in doc["caption"] and "beside the paper" not in doc["caption"]
    assert "Base model: tiny" in doc["caption"]
    assert all(c["paper"] is None and c["paper_mark"] is None for r in doc["rows"] for c in r["cells"].values())
    md = (out / "table_VI.md").read_text()
    assert "(paper)" not in md and md.count("(ours)") == 4
    header = md.splitlines()[2]
    assert header.count("|") == 2 + 4 + 1  # 2 label columns + 4 metric columns
    tex = (out / "table_VI.tex").read_text()
    assert r"\begin{tabular}{llrrrr}" in tex and "paper" not in tex.split(r"\midrule")[0].split(r"\toprule")[1]
