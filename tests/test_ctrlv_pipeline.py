"""Both Ctrl-V stages trained a few steps on tiny parts and synthetic clips, then the two-stage pipeline."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from data.synthetic import synthetic_clip
from trainers.ctrlv.train import load_ctrlv_config

COMMON = ["model=tiny", "data=synthetic", "data.clip_len=4", "data.train.num_clips=2", "train.max_steps=2"]
GEN = OmegaConf.create(
    dict(
        height=64,
        width=96,
        num_frames=4,
        num_inference_steps=2,
        fps=7,
        motion_bucket_id=127,
        noise_aug_strength=0.02,
        min_guidance_scale=1.0,
        max_guidance_scale=3.0,
        decode_chunk_size=4,
        seed=0,
        save_mp4=True,
    )
)
FAST = ["ctrlv.inference.bbox.num_inference_steps=2", "ctrlv.inference.box2video.num_inference_steps=2"]


@pytest.fixture(scope="module")
def runs(tiny_cache, tmp_path_factory):
    """The BBox generator (1-to-1) through the CLI's main (in-process: a subprocess would spend most of
    its time importing), Box2Video through its trainer class; 2 optimizer steps each."""
    from trainers.ctrlv.train import main

    base = tmp_path_factory.mktemp("ctrlv")
    bbox, b2v = base / "bbox", base / "box2video"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["stage=bbox", "variant=1-to-1", *COMMON, "train.lr=1e-3", f"train.out_dir={bbox}"]) == 0
    assert f"run folder: {bbox.resolve()}" in out.getvalue()
    from trainers.ctrlv.box2video import Box2VideoTrainer

    trainer = Box2VideoTrainer(load_ctrlv_config(["stage=box2video", *COMMON, "train.lr=1e-3", f"train.out_dir={b2v}"]))
    trainer.train()
    return bbox, b2v, trainer


def _base_unet_weights():
    from trainers.models import load_svd

    return load_svd(load_ctrlv_config(["model=tiny"]).model).unet.state_dict()


def test_bbox_stage_trains_the_unet_and_exports_it(runs):
    bbox = runs[0]
    summary = json.loads((bbox / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["unet_params"] == summary["trainable_params"]
    cfg = OmegaConf.load(bbox / "config.yaml")
    assert cfg.ctrlv.stage == "bbox" and cfg.ctrlv.variant == "1-to-1" and cfg.schedule.name == "diffusion"
    trained, base = load_file(str(bbox / "unet" / "diffusion_pytorch_model.safetensors")), _base_unet_weights()
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    log = [json.loads(x) for x in (bbox / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss_diff"]) for r in log)


def test_box2video_trains_only_the_controlnet(runs):
    from trainers.ctrlv.box2video import SpatioTemporalControlNet

    _, b2v, trainer = runs
    summary = json.loads((b2v / "summary.json").read_text())
    assert summary["controlnet_params"] == summary["trainable_params"] and summary["global_step"] == 2
    net = SpatioTemporalControlNet.from_pretrained(str(b2v / "controlnet"))
    assert net.controlnet_mid_block.weight.abs().sum() > 0  # zero-initialised, then trained
    assert all(conv.weight.abs().sum() > 0 for conv in net.controlnet_down_blocks)
    base = _base_unet_weights()
    backbone = trainer.backbone.state_dict()
    assert all(torch.equal(backbone[k], base[k]) for k in base)  # the backbone stays frozen


def test_bbox_generator_conditioning_and_target(tiny_cache, tmp_path):
    """3-to-1: frames 0, 1, 2 and T-1 are conditioned on their box-frame latents, the others on the real
    frame-0 latent; the target is the box-frame video."""
    from trainers.ctrlv.bbox_generator import BBoxGeneratorTrainer
    from trainers.ctrlv.render import encode_box_latents
    from trainers.loop import step_generator

    cfg = load_ctrlv_config(
        ["stage=bbox", "variant=3-to-1", *COMMON, "data.clip_len=6", "cond.dropout=0", f"train.out_dir={tmp_path}"]
    )
    trainer = BBoxGeneratorTrainer(cfg)
    seen = {}
    real_loss = trainer.diff_loss

    def capture(unet, z0, cond, embeds, time_ids, generator):
        seen.update(z0=z0, cond=cond)
        return real_loss(unet, z0, cond, embeds, time_ids, generator)

    trainer.diff_loss = capture
    batch = next(iter(trainer.loader))
    trainer.compute_loss(batch, step_generator(0, 0))
    given = [0, 1, 2, 5]
    renders = trainer.render_batch(batch, given)
    box = encode_box_latents(trainer.parts.vae, renders, chunk=renders.shape[0] * renders.shape[1])
    cond = seen["cond"]
    assert torch.equal(cond[:, given], box[:, given])
    assert torch.equal(cond[:, 3], cond[:, 4]) and not torch.allclose(cond[:, 3], box[:, 3])
    # the target is the box video, not the real frames: decode-free check on the latent means
    with torch.no_grad():
        lat = trainer.parts.vae.encode(renders.flatten(0, 1)).latent_dist
    mean = lat.mean.view_as(seen["z0"]) * trainer.parts.latent_scale
    std = lat.std.view_as(seen["z0"]) * trainer.parts.latent_scale
    assert ((seen["z0"] - mean).abs() <= 6 * std + 1e-4).all()


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["stage=bbox", "schedule=staged"], "diffusion loss only"),
        (["stage=box2video", "adapter=lora"], "adapter=unet"),
        (["stage=bbox", "variant=2-to-5"], "ctrlv.variant"),
        (["stage=bbox", "variant=3-to-1"], "data.clip_len"),  # 4 frames leave nothing to generate
    ],
)
def test_stage_config_errors_name_the_key(tiny_cache, tmp_path, overrides, match):
    from trainers.ctrlv.train import trainer_for

    with pytest.raises(ValueError, match=match):
        trainer_for(load_ctrlv_config([*overrides, *COMMON, f"train.out_dir={tmp_path}"])).train()


def test_two_stage_pipeline_end_to_end(runs, tmp_path):
    from data.video_io import read_video
    from trainers.ctrlv.pipeline import CtrlVInputs, CtrlVPipeline, generate_ctrlv_videos

    bbox, b2v, _ = runs
    cfg = load_ctrlv_config(["model=tiny", "variant=1-to-1", *FAST])
    pipe = CtrlVPipeline.from_runs(cfg, bbox, b2v)
    clips = [synthetic_clip(1_000_000 + i, 4, 64, 96) for i in range(2)]
    inputs = [CtrlVInputs.from_clip(c) for c in clips]
    r = generate_ctrlv_videos(pipe, inputs, ["c0", "c1"], GEN, tmp_path / "a")
    assert r["generated"] == 2 and r["seconds"] > 0 and r["seconds_per_video"] > 0
    v0 = read_video(tmp_path / "a" / "frames" / "c0")
    assert v0.shape == (4, 64, 96, 3) and v0.dtype == np.uint8
    assert read_video(tmp_path / "a" / "box_frames" / "c0").shape == (4, 64, 96, 3)
    tracks = json.loads((tmp_path / "a" / "boxes" / "c0.json").read_text())["frames"]
    assert len(tracks) == 4
    for j in (0, 3):  # 1-to-1: the given frames keep their boxes
        assert np.allclose(tracks[j]["boxes"], clips[0].boxes[j])
        assert tracks[j]["track_ids"] == clips[0].track_ids[j].tolist()
    # parameters: per pipeline (U-Net + VAE + image encoder) as for SVD, plus the ControlNet
    from trainers.models import count_params

    p = pipe.num_params()
    assert (
        r["num_params"]
        == p["num_params"]
        == (
            count_params(pipe.bbox_pipe.unet)
            + count_params(pipe.video_pipe.unet)
            + count_params(pipe.controlnet)
            + 2 * (count_params(pipe.video_pipe.vae) + count_params(pipe.video_pipe.image_encoder))
        )
    )
    assert p["num_params_unique"] == p["num_params"] - p["vae"] - p["image_encoder"]
    # resume: a finished clip is not generated again (seeding: see the step-0 test below)
    (tmp_path / "a" / "frames" / "c1").rename(tmp_path / "c1_done")
    again = generate_ctrlv_videos(pipe, inputs, ["c0", "c1"], GEN, tmp_path / "a")
    assert again["generated"] == 1
    assert np.array_equal(read_video(tmp_path / "a" / "frames" / "c1"), read_video(tmp_path / "c1_done"))


def test_box2video_at_step_0_equals_the_backbone_svd_pipeline(runs, tmp_path):
    """With a zero-initialised ControlNet, stage 2 gives exactly the video benchmark.generate makes with
    the backbone alone for the same clip and seed."""
    from benchmark.generate import generate_videos, load_pipeline
    from data.video_io import read_video
    from trainers.ctrlv.pipeline import CtrlVInputs, CtrlVPipeline

    cfg = load_ctrlv_config(["model=tiny", "variant=1-to-0", *FAST])
    pipe = CtrlVPipeline.load(cfg, runs[0] / "unet", controlnet=None, backbone=None)
    clip = synthetic_clip(1_000_000, 4, 64, 96)
    ours = pipe(CtrlVInputs.from_clip(clip), GEN, seed=int(GEN.seed)).video
    generate_videos(load_pipeline(cfg.model), [clip.frames[0]], ["c0"], GEN, tmp_path)
    assert np.array_equal(ours, read_video(tmp_path / "frames" / "c0"))


def test_inputs_from_the_benchmark_testset_layout(tmp_path):
    from PIL import Image

    from trainers.ctrlv.pipeline import CtrlVInputs

    clip = synthetic_clip(3, 4, 64, 96)
    (tmp_path / "first_frames").mkdir()
    (tmp_path / "boxes").mkdir()
    Image.fromarray(clip.frames[0]).save(tmp_path / "first_frames" / "clip_0000.png")
    per_frame = [
        {"boxes": b.tolist(), "labels": lab.tolist(), "track_ids": t.tolist()}
        for b, lab, t in zip(clip.boxes, clip.labels, clip.track_ids)
    ]
    (tmp_path / "boxes" / "clip_0000.json").write_text(json.dumps({"frames": per_frame, "meta": {}}))
    x = CtrlVInputs.from_testset(tmp_path, "clip_0000")
    assert np.array_equal(x.first_frame, clip.frames[0]) and len(x.boxes) == 4
    assert all(np.allclose(a, b) for a, b in zip(x.boxes, clip.boxes))
    assert [t.tolist() for t in x.track_ids] == [t.tolist() for t in clip.track_ids]
    (tmp_path / "boxes" / "clip_0000.json").write_text(json.dumps({"frame": []}))
    with pytest.raises(ValueError, match="clip_0000.json"):
        CtrlVInputs.from_testset(tmp_path, "clip_0000")
