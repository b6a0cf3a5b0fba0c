"""The mini profile's base video model (the mini "SVD"): diffusers' UNetSpatioTemporalConditionModel
at a small size, pretrained with the suite's own EDM diffusion objective (trainers/loop.py with
schedule=diffusion) on the *source* world, inside an SVD pipeline folder whose VAE is the trained
mini temporal VAE (trainers/foundation/vae.py).

The image encoder stays a tiny randomly initialised CLIP vision model (trainers/models.build_tiny_svd):
its embedding is a fixed random function of the first frame, which is all the U-Net's cross-attention
needs to condition on; the first frame's latent (concatenated to every frame's input) carries the
content. The result is a complete diffusers StableVideoDiffusionPipeline folder that `model.svd`
accepts like the real SVD release.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from data.atomic import publish_dir_once


def build_unet(
    num_frames: int = 8,
    block_out_channels=(64, 128, 128),
    layers_per_block: int = 1,
    cross_attention_dim: int = 32,
    num_attention_heads=(2, 4, 4),
    seed: int = 0,
):
    """A small UNetSpatioTemporalConditionModel: cross-attention blocks at every level but the first
    (as SVD's full config), 8 input channels (noisy latent + first-frame latent), 4 out."""
    from diffusers import UNetSpatioTemporalConditionModel

    n = len(block_out_channels)
    torch.manual_seed(seed)
    return UNetSpatioTemporalConditionModel(
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlockSpatioTemporal",) + ("CrossAttnDownBlockSpatioTemporal",) * (n - 1),
        up_block_types=("CrossAttnUpBlockSpatioTemporal",) * (n - 1) + ("UpBlockSpatioTemporal",),
        block_out_channels=tuple(block_out_channels),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        layers_per_block=int(layers_per_block),
        cross_attention_dim=int(cross_attention_dim),
        num_attention_heads=tuple(num_attention_heads),
        num_frames=int(num_frames),
    )


def assemble_svd(folder: str | Path, vae_folder: str | Path, unet, seed: int = 0) -> Path:
    """An SVD pipeline folder: the given U-Net (module or diffusers folder), the trained VAE, the tiny
    random CLIP image encoder of the smoke models (cross_attention_dim 32) and SVD's scheduler."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )

    from trainers.models import build_tiny_svd

    def save(tmp):
        parts = build_tiny_svd(seed)
        parts["vae"] = AutoencoderKLTemporalDecoder.from_pretrained(str(vae_folder))
        parts["unet"] = (
            UNetSpatioTemporalConditionModel.from_pretrained(str(unet)) if isinstance(unet, (str, Path)) else unet
        )
        StableVideoDiffusionPipeline(**parts).save_pretrained(tmp)

    return publish_dir_once(Path(folder), save)


def pretrain_base_model(
    out: str | Path,
    vae_folder: str | Path,
    work_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    unet_arch: dict | None = None,
    seed: int = 0,
) -> Path:
    """Pretrain the mini base model and write the finished SVD folder at `out`.

    `overrides` are trainer config overrides (python -m trainers.train syntax), e.g.
    ['data=mini_source', 'train.max_steps=2000', 'train.lr=3e-4']; the model, schedule and output
    folder are set here. The trainer's checkpoints live under `work_dir/run`, so a killed
    pretraining resumes from its newest checkpoint."""
    from trainers.config import load_config
    from trainers.config_schema import validate
    from trainers.loop import train

    work_dir = Path(work_dir)
    cfg0 = load_config(list(overrides))
    init = assemble_svd(
        work_dir / "init-svd",
        vae_folder,
        build_unet(num_frames=int(cfg0.data.clip_len), seed=seed, **(unet_arch or {})),
        seed,
    )
    cfg = load_config(
        [
            *overrides,
            f"model.svd={init}",
            "schedule=diffusion",
            "adapter=unet",
            f"train.out_dir={work_dir / 'run'}",
            "train.resume=auto",
        ]
    )
    validate(cfg)
    start = time.time()
    run_dir = train(cfg)
    seconds = time.time() - start
    final = assemble_svd(out, vae_folder, run_dir / "unet", seed)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    (final / "pretrain.json").write_text(
        json.dumps({"seconds_this_call": seconds, "trainer_summary": summary, "overrides": list(overrides)}, indent=1)
    )
    return final


def copy_svd(src: str | Path, dst: str | Path) -> Path:
    """A copy of an SVD folder (stages own their outputs)."""
    return publish_dir_once(Path(dst), lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
