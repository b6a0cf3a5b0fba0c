"""The mini profile's foundation trainers, each for a few steps on a reduced world: they run, save
folders the suite's loaders accept, and their measures are right (PSNR, YOLO label files)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from data.synthetic import WORLDS, synthetic_clip

pytest.importorskip("diffusers")


def _clips(world: str, n: int, T: int = 4, h: int = 32, w: int = 48, seed: int = 0):
    return [synthetic_clip(seed + i, T, h, w, world=world) for i in range(n)]


def test_psnr_of_a_known_error():
    from trainers.foundation.vae import psnr

    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x + 0.02, x) == pytest.approx(10 * math.log10(4.0 / 0.02**2))
    assert psnr(x, x) == float("inf")


def test_vae_trains_and_loads(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    from trainers.foundation.vae import train_vae, vae_psnr

    clips = _clips("source", 2) + _clips("nuscenes", 2)
    out = train_vae(
        tmp_path / "vae",
        clips,
        steps=3,
        batch_clips=2,
        frames_per_clip=2,
        arch={"block_out_channels": (32, 32)},
        val_clips=clips[:1],
        log=lambda s: None,
    )
    vae = AutoencoderKLTemporalDecoder.from_pretrained(out)
    assert vae.config.scaling_factor != 0.18215 and math.isfinite(vae.config.scaling_factor)
    assert math.isfinite(vae_psnr(vae, clips[:1]))
    assert (out / "train_log.json").is_file()


def test_yolo_dataset_labels_are_normalised_cxcywh(tmp_path):
    from metrics.detectors.train_yolo import write_yolo_dataset

    clip = synthetic_clip(1, 2, 64, 96, world="kitti")
    data_yaml = write_yolo_dataset({"train": [clip]}, tmp_path)
    assert "  2: car" in data_yaml.read_text() and "  7: truck" in data_yaml.read_text()
    rows = np.loadtxt(tmp_path / "labels" / "train" / "c00000_f001.txt", ndmin=2)
    x1, y1, x2, y2 = clip.boxes[1].T
    np.testing.assert_allclose(rows[:, 0], clip.labels[1])
    np.testing.assert_allclose(
        rows[:, 1:], np.stack([(x1 + x2) / 192, (y1 + y2) / 128, (x2 - x1) / 96, (y2 - y1) / 64], 1), atol=1e-5
    )


def test_dn_detr_trains_and_the_detector_loads_it(tmp_path):
    pytest.importorskip("scipy")
    from metrics.detectors.dn_detr import DNDETRDetector
    from metrics.detectors.train_dn_detr import train_dn_detr

    clips = _clips("nuscenes", 2, T=2, h=64, w=96)
    out = train_dn_detr(
        tmp_path / "dn_detr",
        clips,
        steps=2,
        batch_size=2,
        short_edge_length=64,
        config={"hidden_size": 32, "layers": 1, "num_queries": 4},
        log=lambda s: None,
    )
    det = DNDETRDetector(out, short_edge_length=64, max_det=10)
    dets = det.detect(clips[0].frames)
    assert len(dets) == 2 and all(d.boxes.shape[1] == 4 for d in dets)


def test_backbone_batch_norms_train_and_freeze_into_the_saved_checkpoint(tmp_path):
    """While training, the backbone normalises with batch statistics and learns its affine; on
    exit the frozen layers hold BatchNorm's eval-mode maths exactly, and a reload reproduces it."""
    import torch
    from transformers import DabDetrForObjectDetection

    from metrics.detectors.train_dn_detr import TrainableBatchNorms, mini_config

    torch.manual_seed(0)
    model = DabDetrForObjectDetection(mini_config(hidden_size=32, layers=1, num_queries=4))
    x = torch.randn(2, 3, 64, 96)
    with TrainableBatchNorms(model) as norms:
        assert norms.swapped and all(isinstance(bn, torch.nn.BatchNorm2d) for *_, bn in norms.swapped)
        model.train()
        for _ in range(3):  # move the running statistics and the affine away from their init
            model(pixel_values=x * 3 + 1).logits.sum().backward()
            with torch.no_grad():
                for *_, bn in norms.swapped:
                    bn.weight.add_(0.1 * torch.randn_like(bn.weight))
                    bn.bias.add_(0.1 * torch.randn_like(bn.bias))
        model.eval()
        expected = model(pixel_values=x).pred_boxes
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    frozen = [m for m in model.modules() if type(m).__name__ == "DabDetrFrozenBatchNorm2d"]
    assert frozen and not all(torch.all(m.running_var == 1) for m in frozen)
    torch.testing.assert_close(model(pixel_values=x).pred_boxes, expected)
    model.save_pretrained(tmp_path / "m")
    reloaded = DabDetrForObjectDetection.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(reloaded(pixel_values=x).pred_boxes, expected)


def test_base_model_pretrains_into_an_svd_folder(tmp_path):
    from omegaconf import OmegaConf

    from trainers.foundation.base_model import pretrain_base_model
    from trainers.foundation.vae import train_vae
    from trainers.models import load_svd

    vae = train_vae(
        tmp_path / "vae",
        _clips("source", 2),
        steps=1,
        batch_clips=1,
        frames_per_clip=2,
        arch={"block_out_channels": (32, 32)},
        log=lambda s: None,
    )
    out = pretrain_base_model(
        tmp_path / "svd",
        vae,
        tmp_path / "work",
        unet_arch={"block_out_channels": (32, 64), "num_attention_heads": (2, 4)},
        overrides=[
            "data=mini_source",
            "data.height=32",
            "data.width=48",
            "data.clip_len=4",
            "data.train.num_clips=2",
            "train.max_steps=2",
            "train.epochs=1",
            "train.checkpoint_every=1",
        ],
    )
    parts = load_svd(OmegaConf.create({"svd": str(out), "cache_dir": str(tmp_path)}))
    assert parts.unet.config.block_out_channels == [32, 64] or tuple(parts.unet.config.block_out_channels) == (32, 64)
    assert parts.latent_scale == pytest.approx(type(parts.vae).from_pretrained(vae).config.scaling_factor)
    assert (out / "pretrain.json").is_file()


def test_reduced_world_is_a_plain_world_replacement():
    w = dataclasses.replace(WORLDS["nuscenes"], num_vehicles=(1, 2))
    assert all(len(b) <= 1 for b in synthetic_clip(0, 3, 32, 48, world=w).boxes)
