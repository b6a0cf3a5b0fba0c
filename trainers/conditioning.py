"""SVD's conditioning, exactly as StableVideoDiffusionPipeline builds it (docs/trainer.md).

- CLIP image embedding of frame 0 -> encoder_hidden_states (B, 1, D)
- frame-0 latent: vae.encode(frame0 + noise_aug * eps).latent_dist.mode(), NOT scaled, repeated over T
  and concatenated with the noisy latents on the channel dim
- added_time_ids = [fps - 1, motion_bucket_id, noise_aug]

Ctrl-V's training differs (docs/protocol.md): it encodes the clean frame 0 (noise_aug only enters the
time ids) and draws latent_dist.sample(). `frame_noise=False` and `latent="sample"` select that.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
    _resize_with_antialiasing,  # the pipeline's own resize, so training sees what inference sees
)


class SVDConditioner:
    def __init__(
        self,
        vae,
        image_encoder,
        feature_extractor,
        fps: int = 7,
        motion_bucket_id: int = 127,
        noise_aug: float = 0.02,
        dropout: float = 0.1,
        frame_noise: bool = True,
        latent: str = "mode",
    ):
        if latent not in ("mode", "sample"):
            raise ValueError(f"cond.latent={latent!r}: valid are 'mode', 'sample'")
        self.vae, self.image_encoder = vae, image_encoder
        self.clip_mean = torch.tensor(feature_extractor.image_mean).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(feature_extractor.image_std).view(1, 3, 1, 1)
        self.fps, self.motion_bucket_id, self.noise_aug, self.dropout = fps, motion_bucket_id, noise_aug, dropout
        self.frame_noise, self.latent = bool(frame_noise), latent

    @torch.no_grad()
    def clip_embeds(self, frame0: torch.Tensor) -> torch.Tensor:
        """frame0: [B,3,H,W] in [-1,1] -> [B,1,D]."""
        x = _resize_with_antialiasing(frame0.float(), (224, 224))
        x = ((x + 1.0) / 2.0 - self.clip_mean.to(x)) / self.clip_std.to(x)
        dtype = next(self.image_encoder.parameters()).dtype
        return self.image_encoder(x.to(dtype)).image_embeds.unsqueeze(1)

    @torch.no_grad()
    def cond_latents(self, frame0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> unscaled latent (mode, or a sample) of the frame, noise-augmented
        when frame_noise, [B,4,h,w]."""
        noise = torch.randn(frame0.shape, generator=generator).to(frame0)  # drawn either way: same RNG stream
        x = (frame0 + self.noise_aug * noise) if self.frame_noise else frame0
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return dist.mode() if self.latent == "mode" else dist.sample(generator=generator)

    def time_ids(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        ids = torch.tensor([[self.fps - 1, self.motion_bucket_id, self.noise_aug]], dtype=dtype, device=device)
        return ids.repeat(batch, 1)

    def apply_dropout(self, clip_embeds: torch.Tensor, cond_latents: torch.Tensor, generator: torch.Generator):
        """InstructPix2Pix-style dropout as SVD_Xtend / Ctrl-V: with p ~ U(0,1) per sample, the image
        embedding is zeroed for p < 2*drop and the frame-0 latent for drop <= p < 3*drop."""
        if self.dropout <= 0:
            return clip_embeds, cond_latents
        p = torch.rand(clip_embeds.shape[0], generator=generator).to(clip_embeds.device)
        keep_embed = (p >= 2 * self.dropout).to(clip_embeds.dtype).view(-1, 1, 1)
        keep_latent = 1 - ((p >= self.dropout) & (p < 3 * self.dropout)).to(cond_latents.dtype)
        return clip_embeds * keep_embed, cond_latents * keep_latent.view(-1, 1, 1, 1)

    def __call__(self, frames: torch.Tensor, generator: torch.Generator, train: bool = True):
        """frames [B,T,3,H,W] in [-1,1] -> (clip_embeds [B,1,D], cond [B,T,4,h,w], time_ids [B,3])."""
        B, T = frames.shape[:2]
        frame0 = frames[:, 0]
        embeds = self.clip_embeds(frame0)
        latents = self.cond_latents(frame0, generator)
        if train:
            embeds, latents = self.apply_dropout(embeds, latents, generator)
        cond = latents.unsqueeze(1).repeat(1, T, 1, 1, 1)
        return embeds, cond, self.time_ids(B, frames.device)
