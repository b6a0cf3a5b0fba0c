"""The mini temporal VAE: diffusers' AutoencoderKLTemporalDecoder (SVD's VAE class) at a small size,
trained as an autoencoder on frames of the source and target worlds.

Objective (the reconstruction part of SVD's autoencoder training; no GAN or LPIPS term at this size):
  L = |x_hat - x|_1 + |x_hat - x|_2^2 + beta_kl * KL(q(z|x) || N(0, I)) / (pixels)
with x in [-1, 1]; the decoder sees whole clips (`num_frames` = clip length), so its temporal
layers train too. After training, `scaling_factor` is set to 1 / std of the latents of the training
frames (the convention of SD/SVD: unit-variance latents for the diffusion model).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.clip import Clip


def build_vae(block_out_channels=(32, 64, 64), layers_per_block: int = 1, latent_channels: int = 4, seed: int = 0):
    """A small AutoencoderKLTemporalDecoder; len(block_out_channels) - 1 halvings (3 -> 4x smaller latents)."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    return AutoencoderKLTemporalDecoder(
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        layers_per_block=int(layers_per_block),
        latent_channels=int(latent_channels),
    )


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [-1, 1] [..., 3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over all pixels given."""
    mse = float(((x_hat.clamp(-1, 1) - x) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruct(vae, clip_frames: np.ndarray) -> torch.Tensor:
    """Encode (posterior mode) and decode one clip uint8 [T,H,W,3] -> [-1,1] [T,3,H,W]."""
    x = to_pixels(clip_frames)
    z = vae.encode(x).latent_dist.mode()
    return vae.decode(z, num_frames=len(x)).sample


def vae_psnr(vae, clips: Sequence[Clip]) -> float:
    """Mean reconstruction PSNR over `clips` (each clip decoded whole)."""
    vae.eval()
    return float(np.mean([psnr(reconstruct(vae, c.frames), to_pixels(c.frames)) for c in clips]))


def train_vae(
    out: str | Path,
    clips: Sequence[Clip],
    *,
    steps: int = 1500,
    batch_clips: int = 2,
    frames_per_clip: int = 4,
    lr: float = 1e-3,
    beta_kl: float = 1e-6,
    seed: int = 0,
    arch: dict | None = None,
    val_clips: Sequence[Clip] = (),
    log_every: int = 100,
    log=print,
) -> Path:
    """Train a `build_vae(**arch)` for `steps` AdamW steps on windows of `frames_per_clip` consecutive
    frames of `batch_clips` random clips; save it (diffusers folder) at `out` with `train_log.json`."""
    from data.atomic import publish_dir_once

    vae = build_vae(**(arch or {}), seed=seed).train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    # one-cycle schedule, warm-up over 5 % of the steps (at least 2.5: OneCycleLR divides by the
    # warm-up length and by the rest); a run too short for that (< 5 steps) keeps lr constant
    pct_start = max(0.05, 2.5 / steps)
    if pct_start <= 0.5:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator().manual_seed(seed)
    history, running, start = [], [], time.time()
    for step in range(1, steps + 1):
        windows = []
        for c in rng.choice(len(clips), size=batch_clips, replace=len(clips) < batch_clips):
            T = clips[c].num_frames
            j = int(rng.integers(0, T - frames_per_clip + 1))
            windows.append(clips[c].frames[j : j + frames_per_clip])
        x = to_pixels(np.concatenate(windows))
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)
        x_hat = vae.decode(z, num_frames=frames_per_clip).sample
        kl = posterior.kl().sum() / x.numel()
        loss = (x_hat - x).abs().mean() + ((x_hat - x) ** 2).mean() + beta_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(running)), "seconds": time.time() - start})
            log(f"vae step {step}/{steps} loss {history[-1]['loss']:.4f} ({history[-1]['seconds']:.0f} s)")
            running = []
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(to_pixels(c.frames)).latent_dist.mode() for c in clips[:16]])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    summary = {
        "history": history,
        "scaling_factor": vae.config.scaling_factor,
        "psnr_val": vae_psnr(vae, val_clips) if len(val_clips) else None,
    }

    def save(tmp):
        vae.save_pretrained(tmp)
        (Path(tmp) / "train_log.json").write_text(json.dumps(summary, indent=1))

    return publish_dir_once(Path(out), save)
