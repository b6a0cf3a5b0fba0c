"""The sanity report (benchmark/sanity.py): halves, verdicts, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.sanity import render_markdown, verdict, write_report


def test_verdict_names_what_breaks_the_order():
    assert verdict(1.0, {"gen": 5.0}, 9.0) == "separates"
    v = verdict(1.0, {"gen": 0.5, "other": 10.0}, 9.0)
    assert v.startswith("does NOT separate") and "gen 0.5 <= real-vs-real" in v and "other 10 >= real-vs-noise" in v
    assert "real-vs-real 3 >= real-vs-noise" in verdict(3.0, {}, 2.0)


def test_frechet_sanity_on_smoke_weights_orders_real_blurred_and_noise():
    """With the smoke profile's random I3D / Inception: real halves are closer than blurred
    frames, which are closer than noise (the machinery of the report; the mini report runs it on
    generated videos)."""
    from benchmark.sanity import frechet_sanity
    from data.synthetic import synthetic_clip
    from metrics.evaluate import load_config

    clips = [synthetic_clip(s, 4, 64, 96, world="nuscenes") for s in range(4)]
    blurred = [((c.frames.astype(np.float32) + np.roll(c.frames, 3, axis=2)) / 2).astype(np.uint8) for c in clips]
    out = frechet_sanity(clips, {"blurred": blurred}, load_config("smoke"))
    for m in ("fvd", "fid"):
        assert out[m]["n_per_side"] == 2
        assert np.isfinite(out[m]["real_vs_real"]) and np.isfinite(out[m]["real_vs_noise"])
    assert out["fid"]["verdict"] == "separates", out["fid"]


def test_report_files(tmp_path):
    report = {
        "profile": "mini",
        "note": "n",
        "detectors": {"yolo": {"real": 50.0, "noise": 0.0}},
        "frechet": {
            "fvd": {
                "real_vs_real": 1.0,
                "real_vs_noise": 9.0,
                "generated": {"g": 4.0},
                "n_per_side": 8,
                "verdict": "separates",
            }
        },
    }
    paths = write_report(report, tmp_path)
    text = paths["sanity_md"].read_text()
    assert "| yolo | 50 | 0 |" in text and "| real A vs g B | 4 |" in text and "Verdict: separates" in text
    assert render_markdown({**report, "section": "world"}) == text
    # a table's section is added beside the world's; rewriting a section replaces only it
    table = {"profile": "mini", "testsets": {"mini_nuscenes": {"checks": ["FVD: fine"], **report}}}
    write_report(table, tmp_path, section="table III")
    write_report({**report, "note": "again"}, tmp_path)
    saved = json.loads(paths["sanity_json"].read_text())
    assert set(saved["sections"]) == {"world", "table III"} and saved["sections"]["world"]["note"] == "again"
    text = paths["sanity_md"].read_text()
    assert "## Test set mini_nuscenes" in text and "- FVD: fine" in text and "again" in text
    assert text.index(": world") < text.index(": table III")


def test_report_written_before_sections_is_kept_as_the_world_section(tmp_path):
    (tmp_path / "sanity.json").write_text(json.dumps({"profile": "mini", "frechet": {}, "note": "old"}))
    paths = write_report({"profile": "mini", "note": "t"}, tmp_path, section="table I")
    assert json.loads(paths["sanity_json"].read_text())["sections"]["world"]["note"] == "old"


def test_finetune_check_compares_svd_and_svd_finetuned():
    from benchmark.sanity import finetune_checks

    d = {"fvd": {"generated": {"nuscenes_svd": 2.0, "nuscenes_svd_finetuned": 1.0, "nuscenes_lsa": 0.5}}}
    (line,) = finetune_checks(d)
    assert "nuscenes_svd_finetuned 1 <= nuscenes_svd 2" in line and "moved the model towards" in line
    d["fvd"]["generated"]["nuscenes_svd_finetuned"] = 3.0
    assert "did NOT move" in finetune_checks(d)[0]
    assert finetune_checks({"fid": {"generated": {"hybrid": 1.0}}}) == []
    with pytest.raises(ValueError):
        from benchmark.sanity import frechet_sanity

        frechet_sanity([], {}, None)


def test_report_from_features_equals_evaluate_on_the_videos():
    """frechet_sanity scores every video once (features_of) and compares the halves from the
    features; the numbers equal metrics.evaluate run on each pair of video sets directly."""
    from benchmark.sanity import frechet_sanity, noise_videos
    from data.synthetic import synthetic_clip
    from metrics.evaluate import evaluate, load_config

    cfg = load_config("smoke")
    cfg.metrics = ["fvd", "fid"]
    real = [synthetic_clip(s, 4, 64, 96, world="nuscenes").frames for s in range(5)]  # odd: padded
    gen = [np.roll(v, 2, axis=2) for v in real]
    report = frechet_sanity(real, {"rolled": gen}, cfg)
    a, b = real[0::2][:2], real[1::2]
    direct = {
        "real_vs_real": evaluate(a, b, cfg, progress=False),
        "real_vs_noise": evaluate(a, noise_videos(b), cfg, progress=False),
        "rolled": evaluate(a, gen[1::2], cfg, progress=False),
    }
    for m in ("fvd", "fid"):
        assert report[m]["n_per_side"] == 2
        for k in ("real_vs_real", "real_vs_noise"):
            assert report[m][k] == pytest.approx(direct[k][m]["value"], rel=1e-4), (m, k)
        assert report[m]["generated"]["rolled"] == pytest.approx(direct["rolled"][m]["value"], rel=1e-4)
