"""Stable Video Diffusion behind the backbone interface, wrapping the existing code unchanged:
trainers/models.py (loading), trainers/conditioning.py (SVDConditioner), trainers/edm.py and
trainers/losses.py (DiffusionLoss, decode_with_grad). Same calls, same random draws in the same order
as trainers/loop.py's Trainer (tests/test_backbones.py checks one step against it).

SVD's VAE has no temporal compression: latent frame k is video frame k.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from data.atomic import TEMP_PREFIX
from trainers import edm
from trainers.backbones.base import DiffusionTerms
from trainers.conditioning import SVDConditioner
from trainers.decoder_speed import chunk_checkpoint, decode_with_grad
from trainers.losses import DiffusionLoss
from trainers.models import count_params, load_svd
from trainers.objective import select_frames


class SVDBackbone:
    name = "svd"
    export_name = "unet"

    def __init__(self, cfg, parts=None, unet_path: str | None = None):
        """cfg: the trainer's whole config (model, cond, edm and loss keys)."""
        self.cfg = cfg
        self.parts = parts if parts is not None else load_svd(cfg.model, unet_path=unet_path)
        self.conditioner = SVDConditioner(
            self.parts.vae, self.parts.image_encoder, self.parts.feature_extractor, **OmegaConf.to_container(cfg.cond)
        )
        sigmas = edm.scheduler_sigmas(self.parts.scheduler) if cfg.edm.sigma_dist == "uniform_index" else None
        self.diff_loss = DiffusionLoss(edm.SigmaSampler(cfg.edm.sigma_dist, cfg.edm.p_mean, cfg.edm.p_std, sigmas))

    def trainable(self) -> torch.nn.Module:
        return self.parts.unet

    def frozen(self):
        return [self.parts.vae, self.parts.image_encoder]

    def check_frames(self, num_frames: int, height: int | None = None, width: int | None = None) -> None:
        for key, v in (("data.height", height), ("data.width", width)):
            if v is not None and v % 8:
                raise ValueError(f"{key}={v}: must be a multiple of 8 (the SVD VAE's downsampling)")

    def frames_of_latent(self, k: int) -> list[int]:
        return [k]

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B,T,3,H,W] -> scaled latents [B,T,4,h,w] (a sample of the VAE posterior), as the Trainer."""
        B, T = frames.shape[:2]
        vae = self.parts.vae
        lat = vae.encode(frames.flatten(0, 1).to(vae.dtype)).latent_dist
        return (lat.sample(generator=generator) * self.parts.latent_scale).float().view(B, T, *lat.mean.shape[1:])

    def condition(self, frames: torch.Tensor, z0: torch.Tensor, generator: torch.Generator, train: bool = True):
        """(CLIP embeds, frame-0 latents repeated over T, added time ids): trainers/conditioning.py."""
        return self.conditioner(frames, generator, train=train)

    def diffusion_loss(self, model, z0: torch.Tensor, cond, generator: torch.Generator) -> DiffusionTerms:
        embeds, cond_latents, time_ids = cond
        loss, z0_hat, sigma = self.diff_loss(model, z0, cond_latents, embeds, time_ids, generator)
        return DiffusionTerms(loss, z0_hat, sigma)

    def select_frames(self, num_frames: int, decode_frames) -> list[int]:
        return select_frames(num_frames, decode_frames)

    def decode(self, z0_hat: torch.Tensor, loss_cfg, frames: list[int] | None = None) -> torch.Tensor:
        """Only the `frames` asked for are decoded (SVD's decoder takes any subset of latent frames)."""
        z = z0_hat if frames is None else z0_hat[:, frames]
        return decode_with_grad(
            self.parts.vae,
            z,
            self.parts.latent_scale,
            int(loss_cfg.decode_chunk),
            chunk_checkpoint(loss_cfg),
            bool(loss_cfg.decode_channels_last),
        )

    def export(self, model: torch.nn.Module, folder: Path) -> int:
        from trainers.adapters import merged_unet

        net = merged_unet(copy.deepcopy(model).float())
        folder = Path(folder)
        tmp = folder.parent / f"{TEMP_PREFIX}{folder.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return count_params(net)

    def pipeline(self, trained: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """StableVideoDiffusionPipeline of model.svd, with an exported U-Net folder swapped in when given."""
        from diffusers import (
            StableVideoDiffusionPipeline,
            UNetSpatioTemporalConditionModel,
        )

        from trainers.models import resolve_svd_source

        model_cfg = self.cfg.model
        if model_cfg.svd == "full-random":
            raise ValueError(
                "model.svd=full-random has random weights: it is for performance measurements, "
                "not for generating benchmark videos"
            )
        kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
        if trained is not None:
            kw["unet"] = UNetSpatioTemporalConditionModel.from_pretrained(trained, **kw)
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            resolve_svd_source(model_cfg), revision=model_cfg.get("revision"), variant=model_cfg.get("variant"), **kw
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    def generate(self, pipe, frame0: np.ndarray, gen_cfg, generator: torch.Generator) -> np.ndarray:
        return svd_video(pipe, frame0, gen_cfg, generator)


def svd_video(pipe, frame0: np.ndarray, gen_cfg, generator: torch.Generator) -> np.ndarray:
    """One video (uint8 [T,H,W,3]) of the SVD pipeline from its first frame (uint8 [H,W,3]) with the
    `benchmark.generate` settings; the one place the pipeline is called for benchmark videos."""
    from PIL import Image

    video = pipe(
        Image.fromarray(frame0),
        height=int(gen_cfg.height),
        width=int(gen_cfg.width),
        num_frames=int(gen_cfg.num_frames),
        num_inference_steps=int(gen_cfg.num_inference_steps),
        fps=int(gen_cfg.fps),
        motion_bucket_id=int(gen_cfg.motion_bucket_id),
        noise_aug_strength=float(gen_cfg.noise_aug_strength),
        min_guidance_scale=float(gen_cfg.min_guidance_scale),
        max_guidance_scale=float(gen_cfg.max_guidance_scale),
        decode_chunk_size=int(gen_cfg.decode_chunk_size),
        generator=generator,
        output_type="np",
    ).frames[0]
    return (np.clip(np.asarray(video), 0, 1) * 255).round().astype(np.uint8)
