"""The performance harness runs on the CPU with the tiny model (a smoke test, not a timed assertion)."""

import importlib.util
import json

import pytest

from benchmark.perf.harness import main

SWITCHES = {
    "loss.decode_checkpoint",
    "loss.decode_chunk",
    "train.grad_checkpointing",
    "loss.dino_attention",
    "loss.real_feature_cache",
    "loss.decode_channels_last",
    "train.cudnn_benchmark",
    "loss.decode_frames",
    "train.compile",
    "loss.decode_attention",
    "train.sdpa_backend",
    "train.optimizer",
    "loss.dino_size",
}
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def perf_dir(tiny_cache, tmp_path_factory, monkeypatch_module):
    """Three calls merged into one result file: the steps with the switch sweep, a labelled second
    setting with a partial sweep, then generation and evaluation (as benchmark/perf/gpu.sh runs them,
    one process each)."""
    out = tmp_path_factory.mktemp("perf")
    monkeypatch_module.setenv("LSA_PERF_GEN_STEPS", "1")
    # --warmup 0: one timed step per row (this checks the harness, not the timings)
    common = [
        "--out-dir",
        str(out / "perf"),
        "--merge",
        "--warmup",
        "0",
        "data.clip_len=4",
        f"train.out_dir={out / 'run'}",
    ]
    assert main(["--only", "steps", "--steps", "1", "--sweep", "--sweep-steps", "1", "--profile-decoder", *common]) == 0
    assert (
        main(
            [
                "--only",
                "steps",
                "--adapters",
                "unet",
                "--label",
                "tuned",
                "--steps",
                "1",
                "--sweep",
                "--sweep-steps",
                "1",
                "--sweep-only",
                "loss.decode_frames",
                "loss.decode_channels_last=true",
                *common,
            ]
        )
        == 0
    )
    assert main(["--only", "generation,evaluation", "--gen-videos", "1", "--eval-videos", "2", *common]) == 0
    return out / "perf"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_perf_harness_writes_json_and_markdown(perf_dir):
    js = list(perf_dir.glob("*.json"))
    md = list(perf_dir.glob("*.md"))
    assert len(js) == 1 and len(md) == 1 and js[0].stem.startswith("cpu")
    res = json.loads(js[0].read_text())
    assert set(res["steps"]) == {"unet", "lora", "unet (tuned)"}
    for r in res["steps"].values():
        assert r["diffusion"]["clips_per_s"] > 0 and r["lsa"]["peak_mem_gib"] > 0 and r["lsa_over_diffusion"] > 0
    assert res["generation"]["generated"] == 1 and res["generation"]["hours_per_200_videos"] > 0
    text = md[0].read_text()
    assert "LSA / diffusion" in text and res["device"] in text
    assert "## One switch at a time" in text and "## Generation" in text and "## Evaluation" in text
    assert "approximation: gradient cosine" in text
    prof = res["steps"]["unet"]["decoder_profile"]
    assert prof["backward_s"] > 0 and prof["ops"] and "decoder_profile" not in res["steps"]["lora"]
    assert "## Where the decoder's backward time goes (`unet`, torch.profiler)" in text
    assert res["versions"]["transformers"] in text


def test_sweep_flips_every_switch_on_the_full_unet_only(perf_dir):
    res = json.loads(next(perf_dir.glob("*.json")).read_text())
    sweep = res["steps"]["unet"]["sweep"]
    assert "sweep" not in res["steps"]["lora"]
    assert {row["switch"] for row in sweep} == SWITCHES  # train.adam_fused is timed on CUDA only
    assert [row["value"] for row in sweep if row["switch"] == "train.compile"] == [
        ["vae_decoder"],
        ["vae_decoder", "dino"],
    ]
    assert [row["value"] for row in sweep if row["switch"] == "loss.decode_frames"] == ["every_k:2", "every_k:5"]
    # the CPU has no flash kernels to restrict to; the optimizer row flips to 8-bit states
    assert [(r["switch"], r["value"]) for r in sweep if r["switch"] in ("train.sdpa_backend", "train.optimizer")] == [
        ("train.sdpa_backend", "math"),
        ("train.optimizer", "adamw8bit"),
    ]
    for row in sweep:
        if row["switch"] == "train.optimizer" and not HAS_BNB:
            assert "perf extra" in row["error"]
            continue
        assert row["median_s"] > 0 and row["peak_mem_gib"] > 0, row
    # each approximation is measured against the baseline's gradient on the same batch and randomness
    approx = [r for r in sweep if r.get("approximation")]
    assert {r["switch"] for r in approx} == {"loss.decode_frames", "loss.dino_size"} and len(approx) == 3
    for r in approx:
        assert -1 <= r["grad_cosine"] < 1 and r["loss_feat_rel_diff"] > 0, r
    assert [r["value"] for r in approx if r["switch"] == "loss.dino_size"] == [[56, 70]]  # 70x98 (5x7 patches) -> 4x5
    # the configured setting is restored after each flip: the baseline's setting is recorded unchanged
    s = res["steps"]["unet"]["setting"]
    assert (
        s["decode_checkpoint"],
        s["grad_checkpointing"],
        s["dino_attention"],
        s["real_feature_cache"],
        s["decode_channels_last"],
    ) == (False, False, "sdpa", False, False)


def test_a_labelled_setting_keeps_its_own_partial_sweep(perf_dir):
    res = json.loads(next(perf_dir.glob("*.json")).read_text())
    tuned = res["steps"]["unet (tuned)"]
    assert tuned["setting"]["decode_channels_last"] is True and tuned["setting"]["decode_frames"] == "all"
    assert [(r["switch"], r["value"]) for r in tuned["sweep"]] == [
        ("loss.decode_frames", "every_k:2"),
        ("loss.decode_frames", "every_k:5"),
    ]
    text = next(perf_dir.glob("*.md")).read_text()
    assert "## One switch at a time from `unet`" in text and "## One switch at a time from `unet (tuned)`" in text
    assert "`unet (tuned)` adds: `loss.decode_channels_last=true`" in text


def test_sweep_only_splits_rows_at_commas_outside_brackets():
    from benchmark.perf.harness import split_list

    assert split_list("loss.decode_frames=every_k:5,loss.dino_size=[224,364],train.optimizer") == [
        "loss.decode_frames=every_k:5",
        "loss.dino_size=[224,364]",
        "train.optimizer",
    ]


def test_sweep_only_names_unknown_switches(tmp_path):
    with pytest.raises(ValueError, match="unknown switch.*loss.nope"):
        main(
            [
                "--only",
                "steps",
                "--adapters",
                "unet",
                "--sweep",
                "--sweep-only",
                "loss.nope",
                "--out-dir",
                str(tmp_path),
                f"train.out_dir={tmp_path / 'run'}",
            ]
        )


def test_evaluation_times_both_detector_passes(perf_dir):
    res = json.loads(next(perf_dir.glob("*.json")).read_text())
    e = res["evaluation"]
    assert e["n_videos"] == 2 and e["weights"] == "tiny" and e["frames"] == [4, 64, 96]
    assert set(e["passes"]) == {"fvd+fid+yolo11", "dn_detr"}
    yolo, dn = e["passes"]["fvd+fid+yolo11"], e["passes"]["dn_detr"]
    assert set(yolo["networks_s"]) == {"fvd", "fid", "det"} and set(dn["networks_s"]) == {"det"}
    assert yolo["frechet_s"] > 0 and "frechet_s" not in dn and "dn_detr" in dn["detector"].lower()
    for p in e["passes"].values():
        assert all(s > 0 for s in p["networks_s"].values()) and p["hours_per_200_videos"] > 0
        assert p["det_metric"]["seconds"] > 0 and p["det_metric"]["n_frames"] == 2 * 4
        assert p["detections_of_these_weights"]["preds_per_frame"] >= 0
    assert e["hours_per_200_videos"] == pytest.approx(sum(p["hours_per_200_videos"] for p in e["passes"].values()))


def test_synthetic_detections_look_like_a_trained_detectors():
    from benchmark.perf.harness import synthetic_detections

    videos = synthetic_detections(2, 3, 320, 512, classes=[2, 7], refs_per_frame=5, preds_per_frame=300)
    assert len(videos) == 2 and all(len(refs) == len(preds) == 3 for refs, preds in videos)
    refs, preds = videos[0]
    assert all(len(d.boxes) == 5 and (d.scores >= 0.6).all() for d in refs)
    assert all(len(d.boxes) == 300 and set(d.labels) <= {2, 7} for d in preds)
    b = preds[0].boxes
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_unknown_phase_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "steps,train"])
    assert "unknown phase(s) ['train']" in capsys.readouterr().err
