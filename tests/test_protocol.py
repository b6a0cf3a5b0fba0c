"""The paper profile's protocol (docs/protocol.md): every row's resolved value, and the switches
behind them (mIoU definitions, test windows, conditioning, feature-loss reduction, LoRA epochs,
Ctrl-V's ground-truth-selected box video, captions)."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import HydraResolver
from benchmark.stages import epoch_adapter, expand, select
from metrics.detection import DetProtocol, miou
from metrics.detectors.base import Detections

ROOT = Path(__file__).resolve().parents[1]
XT = "stabilityai/stable-video-diffusion-img2vid-xt"

# key -> (value with data=kitti, value with data=nuscenes); one entry per config key of the table
PAPER = {
    "model.name": ("svd-xt", "svd-xt"),
    "model.svd": (XT, XT),
    "model.variant": ("fp16", "fp16"),
    "data.clip_len": (25, 25),
    "data.height": (320, 320),
    "data.width": (512, 512),
    "cond.fps": (7, 7),
    "cond.motion_bucket_id": (127, 127),
    "train.lr": (1e-5, 1e-5),
    "train.adam_betas": ([0.9, 0.999], [0.9, 0.999]),
    "train.weight_decay": (1e-2, 1e-2),
    "train.batch_size": (1, 1),
    "train.grad_accum": (5, 5),
    "train.max_grad_norm": (None, None),
    "train.mixed_precision": ("bf16", "bf16"),
    "edm.sigma_dist": ("uniform_index", "uniform_index"),
    "cond.noise_aug": (0.01, 0.01),
    "cond.frame_noise": (False, False),
    "cond.latent": ("sample", "sample"),
    "cond.dropout": (0.1, 0.1),
    "train.seed": (1234, 1234),
    "data.train.scenes": ([f"{i:04d}" for i in range(19)], "train"),
    "data.test.scenes": (["0019", "0020"], "val"),
    "data.train.window_step": (1, 2),
    "data.sampling": (None, "sweeps"),
    "train.epochs": (2, 2),
    "schedule.feat_from_epoch": (2, 2),
    "loss.diff_weight": (0.9, 0.9),
    "data.lambda_feat": (60.0, 100.0),
    "loss.alpha": (10.0, 10.0),
    "loss.variant": ("hybrid", "hybrid"),
    "loss.feat_reduction": ("mean", "mean"),
    "loss.feat_mask": ("diff", "diff"),
    "adapter.name": ("unet", "unet"),
    "benchmark.generate.num_inference_steps": (50, 50),
    "benchmark.generate.min_guidance_scale": (1.0, 1.0),
    "benchmark.generate.max_guidance_scale": (3.0, 3.0),
    "benchmark.generate.noise_aug_strength": (0.01, 0.01),
    "benchmark.generate.decode_chunk_size": (8, 8),
    "benchmark.generate.seed": (0, 0),
    "benchmark.num_test_clips": (200, 200),
    "data.test.num_clips": (200, 200),
    "data.test.window_step": (1, None),
    "data.test.select": ("even", "even"),
    "metrics.frame_size": ([256, 410], [256, 410]),
    "metrics.det.protocol": ("lsa", "lsa"),
    "metrics.det.protocols.lsa.classes": ([1, 2, 3, 5, 6, 7],) * 2,
    "metrics.det.protocols.lsa.min_box_px": ([76, 76],) * 2,
    "metrics.det.protocols.lsa.ap": ("coco", "coco"),
    "metrics.det.miou": ("matched_mean", "matched_mean"),
    "metrics.det.miou_match_iou": (0.5, 0.5),
    "train.lr_scheduler": ("constant", "constant"),
    "train.lr_warmup_steps": (0, 0),
    "train.ema.enabled": (False, False),
}
# keys read from the Ctrl-V rows' configs (configs/ctrlv/base.yaml + benchmark.ctrlv_overrides)
PAPER_CTRLV = {
    "ctrlv.bbox_train.lr": 5e-6,
    "ctrlv.bbox_train.dropout": 0.0,
    "ctrlv.inference.bbox.num_inference_steps": 30,
    "ctrlv.inference.bbox.best_of_gt": False,
    "ctrlv.inference.bbox.best_of_guidance": [[1.0, 2.0], [1.0, 3.0], [2.0, 4.0], [2.0, 5.0], [3.0, 5.0]],
    "ctrlv.inference.box2video.num_inference_steps": 50,
    "ctrlv.inference.box2video.min_guidance_scale": 1.0,
    "ctrlv.inference.box2video.max_guidance_scale": 5.0,
    "train.lr": 1e-5,
    "cond.noise_aug": 0.01,
}


@pytest.fixture(scope="module")
def paper():
    r = HydraResolver("paper")
    return {d: r.resolve([f"data={d}"]) for d in ("kitti", "nuscenes")}


@pytest.fixture(scope="module")
def smoke():
    return HydraResolver("smoke")


def test_paper_profile_resolves_every_protocol_row(paper):
    for key, (kitti, nusc) in PAPER.items():
        for data, want in (("kitti", kitti), ("nuscenes", nusc)):
            got = select(paper[data], key, None)
            assert got == pytest.approx(want) if isinstance(want, float) else got == want, (key, data, got)


def test_every_pinned_key_is_in_the_protocol_table():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    table = "\n".join(ln for ln in doc.splitlines() if ln.startswith("| "))
    named = set(re.findall(r"`([a-z_]+(?:\.[a-z_0-9.*]+)*)`", table))
    for key in list(PAPER) + list(PAPER_CTRLV):
        key = {"model.name": "model", "adapter.name": "adapter"}.get(key, key)  # the groups that select them
        prefixes = {key} | {key.rsplit(".", i)[0] + ".*" for i in range(1, key.count(".") + 1)}
        assert named & prefixes, f"{key} is not in docs/protocol.md's table"


def test_paper_profile_ctrlv_rows_follow_ctrlv():
    from ablations.registry import load_table

    graph = expand(load_table("I"), HydraResolver("paper"))
    ctrlv_rows = [p for p in graph.rows if p.row.baseline == "ctrlv"]
    assert ctrlv_rows
    for plan in ctrlv_rows:
        cfg = graph.stages[plan.generate].run_cfg
        for key, want in PAPER_CTRLV.items():
            assert select(cfg, key) == want, (plan.row.name, key)


def test_ctrlv_keys_on_the_command_line_reach_only_ctrlv_stages_and_win():
    from ablations.registry import load_table

    r = HydraResolver(
        "paper", ["ctrlv.inference.bbox.best_of_gt=true", "ctrlv.inference.box2video.num_inference_steps=30"]
    )
    graph = expand(load_table("I"), r)
    cfgs = [graph.stages[p.generate].run_cfg for p in graph.rows if p.row.baseline == "ctrlv"]
    assert cfgs and all(select(c, "ctrlv.inference.bbox.best_of_gt") is True for c in cfgs)
    assert all(select(c, "ctrlv.inference.box2video.num_inference_steps") == 30 for c in cfgs)
    assert all(select(c, "ctrlv.inference.box2video.max_guidance_scale") == 5.0 for c in cfgs)


def test_smoke_profile_keeps_its_values(smoke):
    cfg = smoke.base
    expect = {
        "model.svd": "tiny",
        "edm.sigma_dist": "lognormal",
        "cond.noise_aug": 0.02,
        "cond.frame_noise": True,
        "cond.latent": "mode",
        "train.max_grad_norm": 1.0,
        "train.grad_accum": 1,
        "metrics.det.miou": "hungarian_ref",
        "loss.feat_reduction": "mean",
        "loss.feat_mask": "diff",
    }
    for key, want in expect.items():
        assert select(cfg, key) == want, key
    assert select(cfg, "data.test.window_step", None) is None


# ------------------------------------------------------------------ mIoU
def _D(boxes, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(
        boxes, np.ones(len(boxes), np.float32), np.asarray(labels if labels is not None else [2] * len(boxes), np.int64)
    )


def test_miou_definitions():
    ref = _D([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    pred = _D([[0, 0, 10, 10], [20, 20, 30, 35], [100, 100, 110, 110]])  # IoU 1, 2/3, 0
    assert miou([ref], [pred], definition="hungarian_ref") == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert miou([ref], [pred], definition="matched_mean", match_iou=0.5) == pytest.approx((1 + 2 / 3) / 2)
    assert miou([ref], [pred], definition="matched_mean", match_iou=0.7) == pytest.approx(1.0)
    # a zero-overlap assignment is never a match, even at threshold 0
    assert miou([ref], [pred], definition="matched_mean", match_iou=0.0) == pytest.approx((1 + 2 / 3) / 2)
    assert miou([ref], [_D([[100, 100, 110, 110]])], definition="matched_mean") is None
    with pytest.raises(ValueError, match="mIoU definition"):
        miou([ref], [pred], definition="mean")


def test_miou_key_is_validated_and_reaches_the_protocol():
    det = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "metrics" / "default.yaml"))["det"]
    assert DetProtocol.from_cfg(det).miou == "hungarian_ref"
    p = DetProtocol.from_cfg({**det, "miou": "matched_mean", "miou_match_iou": 0.3})
    assert (p.miou, p.miou_match_iou) == ("matched_mean", 0.3)
    with pytest.raises(ValueError, match="det.miou="):
        DetProtocol.from_cfg({**det, "miou": "nope"})
    with pytest.raises(ValueError, match="det.miou_match_iou"):
        DetProtocol.from_cfg({**det, "miou_match_iou": 2})


# ------------------------------------------------------------------ test windows
def test_test_windows_overlap_and_selection(tmp_path):
    from data.test_split import load_or_create_test_clips

    seqs = {"0019": list(range(1059)), "0020": list(range(837))}
    disjoint, _ = load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path)
    assert len(disjoint) == 75
    clips, path = load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path, window_step=1)
    assert len(clips) == 200 and path.exists()
    starts = [c.first_frame for c in clips if c.scene == "0019"]
    assert starts[0] == 0 and 8 <= starts[1] - starts[0] <= 10  # ~every 9th of 1,848 windows
    again, path2 = load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path, window_step=1)
    assert path2 == path and again == clips  # read back, overlap allowed
    first, _ = load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path, window_step=1, select="first")
    assert [c.first_frame for c in first] == list(range(200)) and {c.scene for c in first} == {"0019"}
    with pytest.raises(ValueError, match="data.test.select"):
        load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path, select="random")
    with pytest.raises(ValueError, match="data.test.window_step"):
        load_or_create_test_clips("kitti", seqs, 25, 1, 200, None, tmp_path / "x", window_step=0)


# ------------------------------------------------------------------ conditioning
@pytest.fixture(scope="module")
def tiny_pipe():
    from diffusers import StableVideoDiffusionPipeline

    from trainers.models import build_tiny_svd

    return StableVideoDiffusionPipeline(**build_tiny_svd(seed=0))


def test_ctrlv_conditioning_encodes_the_clean_frame_and_samples(tiny_pipe):
    from trainers.conditioning import SVDConditioner

    p = tiny_pipe
    x = torch.rand(1, 3, 64, 96) * 2 - 1
    clean = p.vae.encode(x).latent_dist
    ctrlv = SVDConditioner(
        p.vae, p.image_encoder, p.feature_extractor, noise_aug=0.01, frame_noise=False, latent="sample"
    )
    a = ctrlv.cond_latents(x, torch.Generator().manual_seed(3))
    b = ctrlv.cond_latents(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, clean.mode())
    # the sample is drawn around the CLEAN frame's mean, with its std
    z = (a - clean.mean) / clean.std
    assert z.abs().max() < 6
    mode = SVDConditioner(p.vae, p.image_encoder, p.feature_extractor, noise_aug=0.01, frame_noise=False)
    assert torch.allclose(mode.cond_latents(x, torch.Generator().manual_seed(3)), clean.mode(), atol=1e-6)
    assert ctrlv.time_ids(1)[0, 2].item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="cond.latent"):
        SVDConditioner(p.vae, p.image_encoder, p.feature_extractor, latent="mean")


# ------------------------------------------------------------------ feature loss
class _Enc:
    """Patch 'features' = the mean pixel value of each 10x10 patch, repeated over d=4 channels."""

    def __call__(self, x):
        N = x.shape[0]
        f = x.mean(1).reshape(N, 2, 10, 3, 10).mean((2, 4)).reshape(N, 6, 1)
        return f.repeat(1, 1, 4), (2, 3)


def test_feature_loss_reductions_and_mask_placement():
    from trainers.losses import SemanticAlignmentLoss

    x0 = torch.zeros(1, 2, 3, 20, 30)
    x_hat = torch.zeros_like(x0)
    x_hat[0, 0, :, :10, :10] = 1.0  # frame 0, patch (0,0), in the box: diff 1
    x_hat[0, 1, :, 10:, 20:] = 0.5  # frame 1, patch (1,2), no box: diff 0.5
    boxes = [[np.array([[0, 0, 5, 5]]), np.zeros((0, 4))]]
    d, P, T = 4, 6, 2
    per_elem = {"diff": 10**2 * 1.0 + 0.25, "squared": 10 * 1.0 + 0.25}  # summed over the two patches
    for mask, s in per_elem.items():
        for red, want in (("mean", s * d / (T * P * d)), ("patch_sum", s * d / (T * P)), ("frame_sum", s * d / T)):
            loss = SemanticAlignmentLoss(_Enc(), "hybrid", 10.0, reduction=red, mask=mask)(x_hat, x0, boxes)
            assert loss.item() == pytest.approx(want, rel=1e-6), (red, mask)
    with pytest.raises(ValueError, match="loss.feat_reduction"):
        SemanticAlignmentLoss(_Enc(), reduction="sum")
    with pytest.raises(ValueError, match="loss.feat_mask"):
        SemanticAlignmentLoss(_Enc(), mask="box")


# ------------------------------------------------------------------ Table IV LoRA (staged)
def test_lora_staged_shares_epoch_one_with_svd_finetuned(smoke):
    from ablations.registry import load_table

    for resolver in (smoke, HydraResolver("paper")):
        graph = expand(load_table("IV"), resolver)
        chains = {p.row.name: p.train for p in graph.rows}
        assert chains["lora_staged"][0] == chains["svd_finetuned"][0] == chains["unet_staged"][0]
        assert chains["lora_staged"][1] != chains["unet_staged"][1]
        first = graph.stages[chains["lora_staged"][0]]
        second = graph.stages[chains["lora_staged"][1]]
        assert first.run_cfg["adapter"] == {"name": "unet"} and second.run_cfg["adapter"]["name"] == "lora"


def test_epoch_adapter_other_reading_and_bad_value():
    cfg = {"adapter": {"name": "lora", "rank": 16, "lora_epochs": "all"}}
    assert epoch_adapter(cfg, "diffusion") is cfg
    lsa = {"adapter": {"name": "lora", "rank": 16, "lora_epochs": "lsa"}}
    assert epoch_adapter(lsa, "diffusion")["adapter"] == {"name": "unet"}
    assert epoch_adapter(lsa, "lsa") is lsa
    with pytest.raises(ValueError, match="adapter.lora_epochs"):
        epoch_adapter({"adapter": {"name": "lora", "lora_epochs": "first"}}, "diffusion")


@pytest.mark.slow
def test_lora_epoch_starts_from_the_full_unet_epoch_and_logs_weighted_terms(tiny_cache, tmp_path):
    """Epoch 1 trains the full U-Net; the LSA epoch adds LoRA to its export, trains only the adapters,
    and logs 0.9 L_diff and lambda L_feat (log.jsonl, summary.json)."""
    import json

    from safetensors.torch import load_file

    from trainers.config import load_config
    from trainers.loop import Trainer

    common = [
        "model=tiny",
        "data=synthetic",
        "data.train.num_clips=1",
        "data.clip_len=4",
        "schedule=staged",
        "train.checkpoint_every=100",
        "train.lr=1e-3",
    ]
    one = tmp_path / "epoch1"
    Trainer(load_config(common + ["adapter=unet", "train.epochs=1", f"train.out_dir={one}"])).train()
    cfg = load_config(
        common + ["adapter=lora", "train.epochs=2", f"train.out_dir={tmp_path / 'epoch2'}", f"train.init_from={one}"]
    )
    trainer = Trainer(cfg)
    assert trainer.switch_unet == one / "unet"
    model = trainer.acc.unwrap_model(trainer.unet)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    base = load_file(str(one / "unet" / "diffusion_pytorch_model.safetensors"))
    start = model.base_model.model.state_dict()
    key = next(k for k in base if k.endswith("conv_in.weight"))
    assert torch.equal(start[key], base[key])  # starts from epoch 1's weights
    trainer.train()
    assert trainer.state["epoch"] == 3 and trainer.state["global_step"] == 2
    log = [json.loads(ln) for ln in (tmp_path / "epoch2" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [2]
    for r in log:
        assert r["weighted_diff"] == pytest.approx(0.9 * r["loss_diff"])
        assert r["weighted_feat"] == pytest.approx(cfg.loss.lambda_feat * r["loss_feat"])
    scale = json.loads((tmp_path / "epoch2" / "summary.json").read_text())["loss_scale"]["2"]
    assert scale["steps"] == 1 and scale["first_step"]["weighted_feat"] == pytest.approx(log[0]["weighted_feat"])


# ------------------------------------------------------------------ Ctrl-V best of N, BBox training
def test_box_mask_iou_and_best_of_gt_picks_the_closest_candidate():
    from trainers.ctrlv.pipeline import CtrlVPipeline, box_mask_iou

    truth = np.zeros((2, 8, 8, 3), np.uint8)
    truth[:, 2:6, 2:6] = 200
    near = truth.copy()
    near[:, 2:6, 2:4] = 10  # too dark (R+G+B < 50): not a box pixel
    assert box_mask_iou(truth, truth) == 1.0 and box_mask_iou(truth, near) == pytest.approx(0.5)
    assert box_mask_iou(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    candidates = {(1.0, 2.0): np.zeros_like(truth), (2.0, 4.0): truth / 255.0, (3.0, 5.0): near / 255.0}
    calls = []

    def svd_call(pipe, image, gen_cfg, stage, seed):
        calls.append((stage.min_guidance_scale, stage.max_guidance_scale, seed))
        return candidates[(stage.min_guidance_scale, stage.max_guidance_scale)]

    fake = SimpleNamespace(_svd_call=svd_call, bbox_pipe=None)
    cfg = OmegaConf.create(
        {
            "num_inference_steps": 30,
            "min_guidance_scale": 1.0,
            "max_guidance_scale": 3.0,
            "best_of_gt": True,
            "best_of_guidance": [list(k) for k in candidates],
        }
    )
    best = CtrlVPipeline._best_of_gt(fake, None, None, cfg, 7, truth)
    assert np.array_equal(best, truth) and calls == [(1.0, 2.0, 7), (2.0, 4.0, 7), (3.0, 5.0, 7)]


def test_bbox_generator_trains_with_its_own_lr_and_dropout(monkeypatch):
    from trainers.config import load_config
    from trainers.ctrlv import bbox_generator
    from trainers.loop import Trainer

    seen = {}
    monkeypatch.setattr(Trainer, "__init__", lambda self, cfg: seen.update(cfg=cfg))
    base = ["+ctrlv=base", "ctrlv.stage=bbox", "model=tiny", "data=synthetic"]
    bbox_generator.BBoxGeneratorTrainer(
        load_config(base + ["ctrlv.bbox_train.lr=5e-6", "ctrlv.bbox_train.dropout=0.0"])
    )
    assert seen["cfg"].train.lr == 5e-6 and seen["cfg"].cond.dropout == 0.0
    bbox_generator.BBoxGeneratorTrainer(load_config(base))
    assert seen["cfg"].train.lr == 1e-5 and seen["cfg"].cond.dropout == 0.1


# ------------------------------------------------------------------ captions
def test_captions_name_base_model_miou_and_test_clip_overlap(paper, smoke):
    from ablations.registry import load_table
    from benchmark.tables import caption_text, protocol_text

    text = protocol_text([paper["kitti"], paper["nuscenes"]])
    assert XT in text and "matched pairs with IoU >= 0.5" in text
    assert "kitti: 25-frame windows starting every 1 frame(s), overlapping" in text
    assert "nuscenes: non-overlapping clips" in text and "ground-truth" not in text
    cap = caption_text(load_table("III"), description="paper", sizes=[("kitti", 200, 25)], notes=[text])
    assert "N = 200 test videos x 25 frames" in cap and XT in cap
    assert "unmatched = 0" in protocol_text([smoke.base]) and "Base model: tiny" in protocol_text([smoke.base])
    on = {**paper["kitti"], "ctrlv": {"inference": {"bbox": {"best_of_gt": True}}}}
    assert "ground-truth boxes" in protocol_text([on])
