"""profile=rehearsal: the paper profile end to end with random stand-ins in the official formats.

The end-to-end test runs Table III's rows svd_finetuned and hybrid through `benchmark.perf.rehearsal`
(the GPU script's command) at tiny shapes: the same code path as the full-size rehearsal, only the
sizes (config keys) and the counts are smaller. Full-size networks are never built here.
"""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from benchmark import rehearsal
from benchmark.config import ConfigError, HydraResolver

# The sizes and counts of the CPU test: tiny networks of the real classes at 4 x 32 x 48, 1 optimizer
# step per epoch (5 clips at grad_accum 5), 2 sampler steps, DN-DETR at a 64 px short side;
# torch.compile off (minutes of inductor compilation on a CPU)
TINY = [
    "benchmark.stand_ins.networks=tiny",
    "data.height=32",
    "data.width=48",
    "data.clip_len=4",
    "data.train.num_clips=5",
    "train.compile=[]",
    "benchmark.generate.num_inference_steps=2",
    "benchmark.generate.decode_chunk_size=4",
    "+benchmark.eval.detectors.dn_detr.short_edge_length=64",
    "metrics.det.protocols.lsa.min_box_px=[8,8]",  # the paper's 76 px rule, scaled to 32 x 48 frames
    "benchmark.bootstrap.n_resamples=10",
    "benchmark.bootstrap.per_frame_resamples=0",
    "benchmark.check_paths.expect=null",  # the preflight's ViT-B/14 check of model.dino: the tiny DINOv2 is not one
]


def test_rehearsal_is_the_paper_profile_with_smaller_counts():
    paper, reh = HydraResolver("paper").base, HydraResolver("paper", ["benchmark.rehearsal=true"]).base
    assert reh["benchmark"]["profile"] == "rehearsal" and reh["benchmark"]["rehearsal"] is True
    assert "REHEARSAL" in reh["benchmark"]["description"]
    # what the paper profile sets is kept: sampler, precision, checkpointing, compile, protocols, metrics
    for key in ("train", "loss", "edm", "cond", "metrics"):
        a, b = dict(paper[key]), dict(reh[key])
        for k in ("checkpoint_every", "keep_checkpoints", "fvd", "fid"):
            a.pop(k, None), b.pop(k, None)
        assert a == b, key
    size = ("num_frames", "height", "width")  # the data config's (paper: nuScenes at 25 x 320 x 512)
    gen = {k: v for k, v in reh["benchmark"]["generate"].items() if k not in size}
    assert gen == {k: v for k, v in paper["benchmark"]["generate"].items() if k not in size}
    assert [reh["benchmark"]["generate"][k] for k in size] == [25, 320, 512]
    assert reh["model"]["variant"] == "fp16" and reh["model"]["name"] == "svd-xt"
    assert (reh["data"]["clip_len"], reh["data"]["height"], reh["data"]["width"]) == (25, 320, 512)
    assert reh["benchmark"]["num_test_clips"] == 2
    assert reh["data"]["train"]["num_clips"] // reh["train"]["grad_accum"] == 2  # optimizer steps per epoch
    # every weights path points into the stand-in folder, under the paper's file names
    s = rehearsal.settings(reh)
    assert s["networks"] == "full"
    assert Path(reh["model"]["svd"]) == s["dir"] / "stable-video-diffusion-img2vid-xt"
    assert Path(reh["metrics"]["fvd"]["weights"]).name == Path(paper["metrics"]["fvd"]["weights"]).name
    assert Path(reh["metrics"]["fid"]["weights"]).name == Path(paper["metrics"]["fid"]["weights"]).name
    for det in ("dn_detr", "yolo"):
        w = reh["benchmark"]["eval"]["detectors"][det]["weights"]
        assert Path(w).parent == s["dir"]
        assert Path(w).name == Path(paper["benchmark"]["eval"]["detectors"][det]["weights"]).name


def test_rehearsal_flag_needs_the_paper_profile():
    assert HydraResolver("rehearsal").profile == "rehearsal"
    with pytest.raises(ConfigError, match="rehearses the paper profile"):
        HydraResolver("smoke", ["benchmark.rehearsal=true"])


def test_dry_run_lists_the_stand_ins(tmp_path, monkeypatch):
    """--dry-run writes nothing: it lists each stand-in as pending, and their paths are not reported
    missing (the run writes them before its path checks)."""
    from benchmark.run_table import run_table

    monkeypatch.setenv("LSA_REHEARSAL_DIR", str(tmp_path / "rehearsal"))
    lines = []
    run_table(
        "III",
        HydraResolver("rehearsal"),
        None,
        rows=["svd_finetuned", "hybrid"],
        store=tmp_path / "runs",
        dry_run=True,
        echo=lines.append,
    )
    text = "\n".join(lines)
    assert text.count("rehearsal stand-in") == len(rehearsal.FILES) and text.count(" pending ") >= len(rehearsal.FILES)
    assert "preflight:" not in text
    assert not (tmp_path / "rehearsal").exists()


def test_detrex_checkpoint_converts_back_exactly():
    """The stand-in DN-DETR is written with detrex's key names: the real converter maps it back onto
    the very weights it was made from (every key used, no shape or shared-copy mismatch)."""
    from transformers import DabDetrForObjectDetection

    from metrics.detectors.convert_dn_detr import Architecture, convert_state_dict, dab_detr_config

    arch = Architecture(**rehearsal.DN_DETR_TINY)
    torch.manual_seed(0)
    model = DabDetrForObjectDetection(dab_detr_config(arch)).eval()
    src = rehearsal.detrex_state_dict(model, arch)
    assert "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight" in src
    _, converted, report = convert_state_dict(src)
    assert report["used_source_keys"] == len(src)
    expected = model.state_dict()
    expected["model.patterns.weight"][0, -1] = 0.0  # the converter's indicator entry
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_stylegan_v_call_of_a_traced_net(tmp_path):
    """The full-size I3D stand-in is a traced network in StyleGAN-V's TorchScript call: the FVD
    loader reads such a file as `torchscript` and gets [B, 400] features."""
    from metrics.fvd import I3DFeatures, _quiet_jit

    net = torch.nn.Sequential(
        torch.nn.Conv3d(3, 4, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 400)
    )
    path = tmp_path / "i3d_torchscript.pt"
    with _quiet_jit():
        traced = torch.jit.trace(net.eval(), torch.zeros(1, 3, 4, 16, 16))
        torch.jit.save(torch.jit.script(rehearsal._StyleGANVCall(traced).eval()), str(path))
    feats = I3DFeatures(path, device="cpu")
    assert feats.format == "torchscript"
    assert feats(torch.zeros(2, 3, 4, 16, 16)).shape == (2, 400)


@pytest.mark.slow
def test_rehearsal_of_table_III_at_tiny_shapes(tmp_path, monkeypatch, tiny_cache):
    """Table III (svd_finetuned, hybrid) end to end: stand-ins written in the official layout and
    read by the real loaders, both rows' stages done, one checkpoint per epoch and the next epoch
    resumed from it, per-stage time and memory recorded, every output saying it is a rehearsal."""
    from benchmark.perf import rehearsal as perf_rehearsal

    monkeypatch.setenv("LSA_REHEARSAL_DIR", str(tmp_path / "rehearsal"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    opts = dict(perf_rehearsal.OPTIONS, store=str(tmp_path / "runs"), results=str(tmp_path / "results"))
    report, rc = perf_rehearsal.run(opts, list(TINY), tmp_path / "perf")
    assert rc == 0, report.get("error")
    assert report["every_stage_done"] and not report["not_run"]

    folder = Path(report["stand_ins"]["dir"])
    svd = folder / "stable-video-diffusion-img2vid-xt"
    for f in [
        "model_index.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "image_encoder/model.fp16.safetensors",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
    ]:
        assert (svd / f).is_file(), f
    for f in ["dinov2-base/config.json", "dinov2-base/model.safetensors", "i3d_torchscript.pt", "yolo11x.pt"]:
        assert (folder / f).is_file(), f
    assert "model" in torch.load(folder / "dn_detr_r50_50ep.pth", weights_only=True)
    assert torch.jit.load(str(folder / "i3d_torchscript.pt")) is not None

    stages = report["stages"]
    assert Counter(s["kind"] for s in stages) == {"testset": 1, "train": 3, "generate": 2, "evaluate": 2}
    assert all(s["done"] and s["wall_s"] > 0 for s in stages)
    assert all("process_peak_rss_gib" in s or "peak_allocated_gib" in s for s in stages)
    trains = [s for s in stages if s["kind"] == "train"]
    epoch1 = [s for s in trains if s["params"].get("epoch") == 1]
    assert len(epoch1) == 1  # shared by both rows
    for s in trains:
        assert s["steps"] >= 1
        assert len(s["checkpoints_saved"]) == 1 and s["checkpoints_saved"][0]["gib"] > 0
    for s in trains:
        if s is not epoch1[0]:  # epoch 2 of each row starts from epoch 1's checkpoint
            assert len(s["resumed_from"]) == 1 and epoch1[0]["hash"] in s["resumed_from"][0]["folder"]
    assert all(s["seconds_per_video"] > 0 for s in stages if s["kind"] == "generate")
    for s in stages:  # the stand-in DN-DETR's references reach the mAP / mIoU code
        if s["kind"] == "evaluate":
            assert s["metrics"]["det"]["n_ref_boxes"] > 0 and s["metrics"]["det"]["mAP"] is not None

    md = (tmp_path / "perf").glob("*-rehearsal.md")
    text = next(md).read_text()
    assert "REHEARSAL" in text and "Every stage done: **yes**" in text
    table = tmp_path / "results" / "rehearsal" / "table_III.md"
    assert "REHEARSAL" in table.read_text()
    data = json.loads(next((tmp_path / "perf").glob("*-rehearsal.json")).read_text())
    assert data["table"] == "III" and data["rows"] == ["svd_finetuned", "hybrid"]
