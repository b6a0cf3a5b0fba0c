"""profile=mini end to end on a reduced foundation (a few steps per part, 4 test clips): the
foundation is built before the first stage, the table renders, and the sanity report scores every
row's generations, the untrained network's and noise, and both detectors on real and noise frames.
The numbers of so few steps mean nothing; the test checks the path and that every value is a number."""

from __future__ import annotations

import json
import math

REDUCED = [
    "benchmark.num_test_clips=4",
    "benchmark.generate.num_inference_steps=2",
    "benchmark.bootstrap.n_resamples=20",
    "benchmark.bootstrap.per_frame_resamples=0",
    "data.train.num_clips=2",  # fine-tuning: 1 step per epoch
    "data.clip_len=4",  # 4-frame clips everywhere (half the frames to score)
    "benchmark.foundation.frames.clip_len=4",
    "benchmark.foundation.vae.steps=3",
    "benchmark.foundation.vae.clips_per_world=1",
    "benchmark.foundation.vae.val_clips_per_world=1",
    'benchmark.foundation.base_model.overrides=["train.max_steps=2","train.epochs=1000","train.batch_size=2"]',
    "benchmark.foundation.yolo.epochs=1",
    "benchmark.foundation.yolo.clips_per_world=2",
    "benchmark.foundation.yolo.val_clips_per_world=1",
    "benchmark.foundation.dn_detr.steps=2",
    "benchmark.foundation.dn_detr.clips_per_world=2",
]


def test_mini_table_builds_the_foundation_and_writes_the_sanity_report(tmp_path):
    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table
    from benchmark.trainer_runner import TrainerRunner

    resolver = HydraResolver("mini", [f"benchmark.foundation.dir={tmp_path / 'foundation'}", *REDUCED])
    assert {"vae", "base_model", "yolo", "dn_detr"} <= set(resolver.foundation)
    run = run_table(
        "III",
        resolver,
        TrainerRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "results",
        rows=["svd_finetuned", "hybrid"],
        echo=lambda line: None,
    )
    assert all(p.done for p in resolver.foundation.values())
    import torch

    from benchmark.provenance import files_sha256

    for p in resolver.foundation.values():  # each part records what made it, thread count included
        record = json.loads(p.record.read_text())
        assert record["provenance"]["torch_threads"] == torch.get_num_threads() and record["provenance"]["versions"]
        assert record["provenance"]["lock"]["sha256"] and record["provenance"]["versions"]["numpy"]
        # and what it made: the sha256 of every weights file, to compare two builds of one hash
        assert record["sha256"] and record["sha256"] == files_sha256(p.path), p.name
        assert any(name.endswith((".safetensors", ".pt")) for name in record["sha256"]), record["sha256"]
    assert run.outputs["sanity_md"].exists()
    report = json.loads(run.outputs["sanity_json"].read_text())
    section = report["sections"]["table III"]
    assert section["foundation"]["vae"]["PSNR val (dB)"] > 0
    ts = section["testsets"]["mini_nuscenes"]
    for m in ("fvd", "fid"):
        d = ts["frechet"][m]
        assert set(d["generated"]) == {"svd_finetuned", "hybrid", "untrained network"}
        values = [d["real_vs_real"], d["real_vs_noise"], *d["generated"].values()]
        assert all(math.isfinite(v) for v in values), d
        assert d["real_vs_real"] < d["real_vs_noise"], d  # noise is far from the real clips even here
    assert set(ts["detectors"]) == {"dn_detr", "yolo"}
    for d in ts["detectors"].values():
        assert math.isfinite(d["real"]) and math.isfinite(d["noise"])
    text = run.outputs["sanity_md"].read_text()
    assert "table III" in text and "untrained network" in text
    # a second table's section is added beside this one, and a rerun replaces its own
    from benchmark.sanity import write_report

    write_report({"profile": "mini", "note": "x"}, run.results_dir, section="world")
    assert set(json.loads(run.outputs["sanity_json"].read_text())["sections"]) == {"world", "table III"}
