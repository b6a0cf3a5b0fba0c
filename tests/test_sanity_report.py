"""The sanity report (benchmark/sanity.py): halves, verdicts, files."""

from __future__ import annotations

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
    text = paths["md"].read_text()
    assert "| yolo | 50 | 0 |" in text and "| real A vs g B | 4 |" in text and "Verdict: separates" in text
    assert render_markdown(report) == text
    with pytest.raises(ValueError):
        from benchmark.sanity import frechet_sanity

        frechet_sanity([], {}, None)
