"""Rendering tables (bold / underline per direction, missing cells, md + LaTeX + JSON) and figures."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ablations.registry import load_table, parse_spec
from benchmark import figures
from benchmark.tables import caption_text, make_table, rank_marks, render_table

SPEC = """
table: X
title: A test table.
label_columns: [Model]
detector: dn_detr
columns:
  - {id: fvd, name: FVD, key: fvd.value, direction: down, format: "{:.2f}"}
  - {id: map, name: mAP, key: det.mAP, direction: up, format: "{:.2f}"}
rows:
  - {name: a, labels: {Model: A}, paper: {fvd: "300.00", map: "10.5"}}
  - {name: b, labels: {Model: B}, paper: {fvd: "200.00", map: "30.0"}}
  - {name: c, labels: {Model: C}, paper: {fvd: "100.00", map: "20.0"}}
  - {name: d, labels: {Model: "D & 50% #1"}, baseline: ctrlv, ctrlv: {variant: 1-to-0, backbone: svd},
     paper: {fvd: "50.00", map: "90.0"}}
"""


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "table_X.yaml"
    p.write_text(SPEC)
    return parse_spec(p)


def cells(doc, row):
    return next(r for r in doc["rows"] if r["name"] == row)["cells"]


def test_rank_marks_follow_the_direction():
    assert rank_marks([3.0, 1.0, 2.0], "up") == ["best", None, "second"]
    assert rank_marks([3.0, 1.0, 2.0], "down") == [None, "best", "second"]
    assert rank_marks([1.0, 1.0, 2.0, None], "down") == ["best", "best", "second", None]  # ties share
    assert rank_marks([1.0, 2.0], "up") == [None, "best"]  # two values: no "second"
    assert rank_marks([None, float("nan")], "up") == [None, None]


def test_a_column_whose_values_all_tie_is_not_marked(spec):
    assert rank_marks([0.0, 0.0, 0.0], "up") == [None, None, None]
    assert rank_marks([5.0, None, 5.0], "down") == [None, None, None]
    assert rank_marks([7.0, None], "up") == [None, None]  # a single value ranks nothing
    ours = {"a": {"fvd": 1.0, "map": 0.0}, "b": {"fvd": 2.0, "map": 0.0}, "c": {"fvd": 3.0, "map": 0.0}}
    t = make_table(spec, ours, caption="c")
    assert all(cells(t["json"], r)["map"]["ours_mark"] is None for r in "abc")  # all 0.00
    assert "**0.00**" not in t["md"] and r"\textbf{0.00}" not in t["tex"]
    assert cells(t["json"], "a")["fvd"]["ours_mark"] == "best"
    # distinct values never print alike: 0.001 gets the decimal that shows it (tables.enough_digits)
    ours["c"]["map"] = 0.001
    t = make_table(spec, ours, caption="c")
    assert cells(t["json"], "c")["map"]["ours_text"] == "0.001" and cells(t["json"], "c")["map"]["ours_mark"] == "best"


def test_markdown_latex_json_marks_and_missing_cells(spec):
    ours = {"a": {"fvd": 250.0, "map": 12.0}, "b": {"fvd": 150.0, "map": None}, "c": {"fvd": 350.0, "map": 40.0}}
    t = make_table(spec, ours, caption="cap")
    md, tex, doc = t["md"], t["tex"], t["json"]
    # ours, FVD (down): b best, a second; mAP (up): only two values -> best only
    assert cells(doc, "b")["fvd"]["ours_mark"] == "best" and cells(doc, "a")["fvd"]["ours_mark"] == "second"
    assert cells(doc, "c")["map"]["ours_mark"] == "best" and cells(doc, "a")["map"]["ours_mark"] is None
    assert "| B | **150.00** |" in md and "| A | <u>250.00</u> |" in md
    assert r"\textbf{150.00}" in tex and r"\underline{250.00}" in tex
    # paper numbers ranked on their own, shown as printed
    assert cells(doc, "d")["fvd"]["paper_mark"] == "best" and cells(doc, "c")["fvd"]["paper_mark"] == "second"
    assert cells(doc, "d")["map"]["paper_text"] == "90.0" and "**90.0**" in md
    # missing value or a row without results -> n/a, never dropped, paper still shown
    assert cells(doc, "b")["map"]["ours_text"] == "n/a" and cells(doc, "b")["map"]["ours"] is None
    assert all(c["ours_text"] == "n/a" and c["ours"] is None for c in cells(doc, "d").values())
    assert md.count("n/a") == 3 and tex.count("n/a") == 3  # b mAP, d FVD, d mAP
    # LaTeX escaping of labels
    assert r"D \& 50\% \#1" in tex and r"\begin{tabular}{lrrrr}" in tex
    assert len(doc["rows"]) == 4 and json.loads(json.dumps(doc)) == doc


def test_marks_use_the_printed_values(spec):
    # beyond the 4 extra decimals enough_digits may add, both print 1.000000 and tie
    ours = {"a": {"fvd": 1.0000004, "map": 1}, "b": {"fvd": 1.0000001, "map": 2}, "c": {"fvd": 9.0, "map": 3}}
    doc = make_table(spec, ours, caption="c")["json"]
    assert cells(doc, "a")["fvd"]["ours_mark"] == cells(doc, "b")["fvd"]["ours_mark"] == "best"
    assert cells(doc, "a")["fvd"]["ours_text"] == "1.000000"
    ours["a"]["fvd"] = 1.004  # within reach: printed 1.004 and 1.001, ranked as printed
    doc = make_table(spec, ours, caption="c")["json"]
    assert cells(doc, "b")["fvd"]["ours_mark"] == "best" and cells(doc, "a")["fvd"]["ours_mark"] == "second"


def test_rank_within_groups_and_paper_texts_of_table_I():
    spec = load_table("I")
    doc = make_table(spec, {}, caption="c")["json"]
    # best FVD per dataset, as in the paper: LSA on both nuScenes and KITTI
    assert cells(doc, "nuscenes_lsa")["fvd"]["paper_mark"] == "best"
    assert cells(doc, "kitti_lsa")["fvd"]["paper_mark"] == "best"
    assert cells(doc, "nuscenes_svd_finetuned")["fvd"]["paper_mark"] == "second"
    assert cells(doc, "kitti_ctrlv_1to0")["fvd"]["paper_mark"] == "second"
    assert cells(doc, "nuscenes_lsa")["miou"]["paper_text"] == "80.6"
    assert cells(doc, "nuscenes_ctrlv_1to0")["params_m"]["paper_text"] == "5189 (+130%)"
    assert all(c["ours_text"] == "n/a" for c in cells(doc, "nuscenes_lsa").values())
    tex = make_table(spec, {}, caption="c")["tex"]
    assert r"\multicolumn{4}{c}{Visual quality}" in tex and r"\cmidrule(lr){3-6}" in tex
    assert tex.count(r"\midrule") == 2  # header rule + the nuScenes/KITTI split


def test_caption_states_n_frames_and_profile():
    spec = load_table("III")
    cap = caption_text(
        spec,
        description="smoke: tiny random models, synthetic clips; checks the machinery, not the science",
        sizes=[("synthetic", 2, 8)],
    )
    assert "N = 2 test videos x 8 frames" in cap and cap.endswith("checks the machinery, not the science.")
    fake = caption_text(spec, description="d", sizes=[], fake=True)
    assert "FAKE RUNNER" in fake and "N = 0 (no test videos" in fake


def test_render_table_writes_md_tex_json(spec, tmp_path):
    out = render_table(spec, {"a": {"fvd": 1.0, "map": 2.0}}, caption="cap", out_dir=tmp_path / "res", profile="smoke")
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["table_X.json", "table_X.md", "table_X.tex"]
    assert json.loads(out["json"].read_text())["profile"] == "smoke"
    assert out["md"].read_text().startswith("**cap**")


# ------------------------------------------------------------------------------------ figures
def _png_ok(path: Path):
    from PIL import Image

    assert path.exists() and Image.open(path).size[0] > 100


def test_loss_curves_from_jsonl_logs(tmp_path):
    e1, e2 = tmp_path / "e1.jsonl", tmp_path / "e2.jsonl"
    e1.write_text(
        "".join(
            json.dumps({"step": s, "epoch": 1, "loss": 1.0 / s, "loss_diff": 1.0 / s, "loss_feat": 0.0}) + "\n"
            for s in (1, 2, 3)
        )
    )
    e2.write_text(
        "".join(
            json.dumps({"step": s, "epoch": 2, "loss": 0.5, "loss_diff": 0.4, "loss_feat": 0.1}) + "\n" for s in (1, 2)
        )
        + "\n"
    )
    recs = figures.concat_logs([e1, e2])
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]  # a restarted count continues
    _png_ok(figures.plot_loss_curves({"hybrid": [e1, e2]}, tmp_path / "loss.png"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1}\n{oops\n')
    with pytest.raises(ValueError, match=re.escape(f"{bad}:2")):
        figures.read_loss_log(bad)
    assert figures.plot_loss_curves({}, tmp_path / "none.png") is None


def test_per_frame_and_frame_grid(tmp_path):
    from PIL import Image

    _png_ok(
        figures.plot_per_frame(
            {"a": {"mAP": [30, 20, 10], "mIoU": [80, 70, 60]}, "b": {"mAP": [20, 20, None], "mIoU": [50, 50, 50]}},
            tmp_path / "pf.png",
        )
    )
    rng = np.random.default_rng(0)
    for root in ("real", "gen"):
        for clip in ("clip_0000", "clip_0001"):
            (tmp_path / root / clip).mkdir(parents=True)
            for j in range(4):
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                    tmp_path / root / clip / f"{j:06d}.png"
                )
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "clip_0000.json").write_text(json.dumps({"frames": [{"boxes": [[2, 2, 9, 9]]}] * 4}))
    _png_ok(
        figures.plot_frame_grid(
            tmp_path / "real",
            {"lsa": tmp_path / "gen"},
            ["clip_0000", "clip_0001"],
            tmp_path / "grid.png",
            n_frames=3,
            boxes_dir=tmp_path / "boxes",
        )
    )


# ------------------------------------------------------------------------------------ end to end
def test_smoke_table_end_to_end_with_the_fake_runner(tmp_path):
    """The whole path of `benchmark.run table=III` (compose, expand, run, render, figures) on FakeRunner."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fakes import FakeRunner

    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table

    run = run_table(
        "III",
        HydraResolver("smoke"),
        FakeRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "results",
        echo=lambda s: None,
    )
    out = tmp_path / "results" / "smoke-fake"
    assert set(run.outputs) == {"md", "tex", "json", "loss_curves", "per_frame", "frames", "html", "html_assets"}
    doc = json.loads((out / "table_III.json").read_text())
    assert [r["name"] for r in doc["rows"]] == ["svd_finetuned", "global", "box", "hybrid"]
    assert all(isinstance(c["ours"], float) for r in doc["rows"] for c in r["cells"].values())
    assert doc["fake"] and "FAKE RUNNER" in doc["caption"] and "checks the machinery" in doc["caption"]
    assert "N = 2 test videos x 3 frames" in doc["caption"]
    md = (out / "table_III.md").read_text()
    assert md.count("**") >= 4 * 2 and "<u>" in md


def test_table_I_measures_efficiency_including_ctrlv(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fakes import FakeRunner

    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table

    run_table(
        "I",
        HydraResolver("smoke"),
        FakeRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "res",
        echo=lambda s: None,
        figures=False,
    )
    doc = json.loads((tmp_path / "res" / "smoke-fake" / "table_I.json").read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert len(rows) == 8
    lsa = rows["nuscenes_lsa"]["cells"]
    assert lsa["params_m"]["ours"] == pytest.approx(1.234567)  # FakeRunner's num_params / 1e6
    assert 0 < lsa["time_h"]["ours"] < 1  # measured seconds -> h per 200 videos
    ctrlv = rows["kitti_ctrlv_1to0"]["cells"]  # the two-stage pipeline's count
    assert ctrlv["params_m"]["ours"] == pytest.approx(2 * 1.234567) and ctrlv["fvd"]["ours"] is not None


def test_smoke_table_end_to_end_with_the_real_runner(tmp_path, tiny_cache):
    """The real thing (trainer, SVD pipeline, metrics) on a very small setting."""
    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table
    from benchmark.trainer_runner import TrainerRunner

    resolver = HydraResolver(
        "smoke",
        [
            "benchmark.num_test_clips=2",
            "benchmark.generate.num_inference_steps=1",
            "data.train.num_clips=1",
            "data.clip_len=4",
        ],
    )
    run = run_table(
        "III",
        resolver,
        TrainerRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "res",
        rows=["svd_finetuned", "hybrid"],
        echo=lambda s: None,
    )
    doc = json.loads(run.outputs["json"].read_text())
    assert not doc["fake"] and [r["name"] for r in doc["rows"]] == ["svd_finetuned", "hybrid"]
    cells = {r["name"]: r["cells"] for r in doc["rows"]}
    for column in ("map", "miou"):
        values = [c[column]["ours"] for c in cells.values()]
        assert all(v is not None and 0 <= v <= 100 for v in values), (column, values)
        assert any(v > 0 for v in values), f"{column} is 0 in every row: the smoke detector finds nothing"
    extra = {r["name"]: r["extra"] for r in doc["rows"]}
    # the two rows share epoch 1 but not epoch 2 (hybrid trains it with L_feat): their generated frames
    # must differ; equal frames would mean one row's result was read for both
    gen = {name: tmp_path / "runs" / e["stages"]["generate"] / "frames" for name, e in extra.items()}
    first = {name: sorted(p.rglob("*.png")) for name, p in gen.items()}
    assert first["svd_finetuned"] and len(first["svd_finetuned"]) == len(first["hybrid"])
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(first["svd_finetuned"], first["hybrid"]))
    extra = {r["name"]: r["extra"] for r in doc["rows"]}
    assert extra["svd_finetuned"]["stages"]["train"][0] == extra["hybrid"]["stages"]["train"][0]
    assert extra["svd_finetuned"]["stages"]["train"][1] != extra["hybrid"]["stages"]["train"][1]
    per_frame = extra["svd_finetuned"]["per_frame"]["dn_detr"]
    assert len(per_frame["mIoU"]) == 4 and per_frame["n_ref_boxes"][0] > 0
    assert all(0 <= v <= 100 for v in per_frame["mIoU"] + per_frame["mAP"] if v is not None)
    # every stage finished with its files, and every output was written
    store = tmp_path / "runs"
    for stages in extra.values():
        for h in [
            stages["stages"]["testset"],
            *stages["stages"]["train"],
            stages["stages"]["generate"],
            *stages["stages"]["evaluate"].values(),
        ]:
            assert (store / h / "DONE").is_file() and (store / h / "MANIFEST.json").is_file(), h
        for h in stages["stages"]["evaluate"].values():
            metrics = json.loads((store / h / "metrics.json").read_text())
            assert metrics["n_videos"] == 2, metrics.get("n_videos")
        assert len(list((store / stages["stages"]["generate"] / "frames").iterdir())) == 2
    assert set(run.outputs) == {"md", "tex", "json", "html", "html_assets", "loss_curves", "per_frame", "frames"}, set(
        run.outputs
    )
    for path in run.outputs.values():
        assert Path(path).stat().st_size > 200, path


SMOKE_RESULTS = Path(__file__).resolve().parents[1] / "results" / "smoke"


@pytest.mark.parametrize("table", ["I", "II", "III", "IV", "V", "VI", "VII"])
def test_committed_smoke_tables_have_moving_detection_columns(table):
    """The smoke detectors must let mAP and mIoU move: a committed smoke table whose mAP or mIoU
    column is 0 in every row was made by a detector that finds nothing."""
    doc = json.loads((SMOKE_RESULTS / f"table_{table}.json").read_text())
    for col in doc["columns"]:
        if col["key"] not in ("det.mAP", "det.mIoU"):
            continue
        values = [r["cells"][col["id"]]["ours"] for r in doc["rows"]]
        assert any(v for v in values), f"table_{table}.json: column {col['id']} is 0 or missing in every row: {values}"


def test_cells_get_the_decimals_that_tell_distinct_values_apart():
    from ablations.registry import Column
    from benchmark.tables import enough_digits

    col = Column(id="fvd", name="FVD", key="fvd.value", direction="down", format="{:.2f}")
    assert enough_digits(col, [0.0474, 0.0460, None]).format == "{:.3f}"  # 0.05 twice at {:.2f}
    assert enough_digits(col, [13.87, 13.66]) is col  # already distinct
    assert enough_digits(col, [0.07, 0.07]) is col  # equal values stay equal
    assert enough_digits(col, [1.0, 1.0 + 1e-9]).format == "{:.6f}"  # at most 4 more decimals
    assert enough_digits(Column("t", "T", "hours", "down", format="{:.3g}"), [0.0474, 0.0460]).format == "{:.3g}"
