"""Table VII (ours, not in the paper): LSA against REPA and VideoREPA-TRD. The spec, how its rows share
stages (and leave Tables I-VI's hashes alone), and the step-cost column of the perf harness."""

from __future__ import annotations

import os

import pytest

from ablations.registry import load_table


def _graph(table="VII", *user, rows=None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmark.config import HydraResolver
    from benchmark.stages import expand

    return expand(load_table(table).select(rows), HydraResolver("smoke", list(user)))


def _train(graph, row):
    return next(p.train for p in graph.rows if p.row.name == row)


def test_spec_rows_columns_and_no_paper_numbers():
    spec = load_table("VII")
    assert not spec.in_paper and all(r.paper == {} for r in spec.rows)
    assert [r.name for r in spec.rows] == ["svd_finetuned", "lsa_hybrid", "repa", "repa_box", "trd", "trd_box"]
    assert [c.id for c in spec.columns] == ["fvd", "fid", "map", "miou", "cost"]
    assert spec.column("cost").source == "perf" and spec.detectors_for(spec.row("repa")) == ["dn_detr"]


def test_rows_share_epoch_one_and_alignment_keys_reach_only_alignment_stages():
    g = _graph()
    chains = {p.row.name: p.train for p in g.rows}
    assert len({c[0] for c in chains.values()}) == 1  # one diffusion-only epoch 1 for every row
    assert len({c[1] for c in chains.values()}) == 6  # six different second epochs
    # LSA's rows keep the hashes of Table III (loss.align is out of their hash) ...
    g3 = _graph("III", "loss.align.coeff=2", "loss.align.block=mid_block", rows=["svd_finetuned", "hybrid"])
    assert _train(g3, "hybrid")[1] == chains["lsa_hybrid"][1]
    assert _train(g3, "svd_finetuned") == chains["svd_finetuned"]
    # ... while the alignment rows depend on their keys, and not on LSA's decode settings
    g2 = _graph("VII", "loss.align.coeff=2", rows=["repa", "trd"])
    assert _train(g2, "repa")[1] != chains["repa"][1] and _train(g2, "trd")[1] != chains["trd"][1]
    g4 = _graph("VII", "loss.decode_chunk=2", rows=["lsa_hybrid", "repa"])
    assert _train(g4, "lsa_hybrid")[1] != chains["lsa_hybrid"][1]  # decode_chunk reaches LSA
    assert _train(g4, "repa") == chains["repa"]


def test_step_cost_column_is_measured_in_one_process(tiny_cache):
    from benchmark.perf.table_cost import caption_note, row_step_costs

    loss = {"variant": "repa", "align": {"mask": "hybrid", "projector_dim": 16}}
    costs = row_step_costs({"ft": None, "repa": loss}, steps=1, warmup=0, overrides=["data.clip_len=4"])
    assert costs["ft"] == {"ratio": 1.0, "by_definition": True}
    r = costs["repa"]
    assert r["variant"] == "repa" and r["pairs_s"] == [[r["diffusion_s"], r["step_s"]]]  # one pair
    assert r["ratio"] == pytest.approx(r["step_s"] / r["diffusion_s"]) and r["diffusion_s"] > 0
    assert costs["_setting"]["frames"] == [4, 3, 64, 96] and costs["_setting"]["model"] == "tiny"
    assert "fine-tuned = 1 by definition" in caption_note(costs)
