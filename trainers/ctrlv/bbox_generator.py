"""Ctrl-V stage 1, the BBox generator: an SVD U-Net fine-tuned to generate the box-frame video of a clip.

Conditioning (Ctrl-V's train_video_diffusion.py with --predict_bbox): the CLIP embedding of the real
first frame as usual, and per frame the SVD conditioning latent: the (noise-augmented) real frame-0
latent, except that the frames whose boxes are given (the first 1 or 3, plus the last for the
interpolating variants) get the unscaled VAE latent (mode) of their box frame instead. The target is
the box-frame video itself (VAE latents, scaled), trained with the shared diffusion loss. Conditioning
dropout drops the CLIP embedding / the whole conditioning latent stack, as the classifier-free guidance
at inference replaces both by zeros (Ctrl-V's pipeline does; its training script sets the dropout to 0).

At inference (`FrameConditioning`) the stock StableVideoDiffusionPipeline builds the frame-0
conditioning and a forward pre-hook swaps in the box latents of the given frames, so training and
inference compose the conditioning with the same function.
"""

from __future__ import annotations

import torch

from trainers.ctrlv.common import CtrlVTrainer, conditioning_frames
from trainers.models import load_svd


def compose_conditioning(
    frame0_latents: torch.Tensor, box_latents: torch.Tensor, frames: list[int], num_frames: int
) -> torch.Tensor:
    """frame0_latents [B,4,h,w], box_latents [B,len(frames),4,h,w] -> per-frame conditioning [B,T,4,h,w]."""
    cond = frame0_latents.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    cond[:, frames] = box_latents.to(cond)
    return cond


class FrameConditioning:
    """`with FrameConditioning(unet, frames, box_latents):` U-Net calls get the box latents [B,n,4,h,w]
    as the conditioning channels of `frames` (the unconditional half of a doubled CFG batch keeps its
    zeros, as Ctrl-V's pipeline)."""

    def __init__(self, unet, frames: list[int], box_latents: torch.Tensor):
        self.unet, self.frames, self.box_latents = unet, list(frames), box_latents
        self._handle = None

    def __enter__(self):
        self._handle = self.unet.register_forward_pre_hook(self._swap, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def _swap(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        c = int(self.unet.config.out_channels)  # [noisy latents | conditioning latents]
        B = self.box_latents.shape[0]
        if sample.shape[0] not in (B, 2 * B):
            raise ValueError(f"box latents for {B} videos, the U-Net is called with a batch of {sample.shape[0]}")
        sample = sample.clone()
        # the pipeline repeats the frame-0 latent over the frames: rebuild the conditional half's
        # conditioning from it exactly as training does
        frame0 = sample[-B:, 0, c:]
        sample[-B:, :, c:] = compose_conditioning(frame0, self.box_latents, self.frames, sample.shape[1])
        return ((sample, *args[1:]), kwargs) if args else (args, kwargs | {"sample": sample})


class BBoxGeneratorTrainer(CtrlVTrainer):
    """Fine-tunes the SVD U-Net (or `ctrlv.bbox_init_unet`) to generate box-frame videos."""

    stage = "bbox"

    def __init__(self, cfg):
        # ctrlv.bbox_train: Ctrl-V trains its BBox generator with its own lr and without conditioning
        # dropout; null keeps the shared train.lr / cond.dropout
        own = cfg.ctrlv.get("bbox_train") or {}
        if own.get("lr") is not None or own.get("dropout") is not None:
            cfg = cfg.copy()
            if own.get("lr") is not None:
                cfg.train.lr = float(own["lr"])
            if own.get("dropout") is not None:
                cfg.cond.dropout = float(own["dropout"])
        super().__init__(cfg)

    def load_parts(self):
        init = self.cfg.ctrlv.bbox_init_unet
        return load_svd(self.cfg.model, unet_path=str(init) if init else None)

    def compute_loss(self, batch, generator):
        acc, vae = self.acc, self.parts.vae
        frames = batch["frames"].to(acc.device)  # real clip, [B,T,3,H,W] in [-1,1]
        B, T = frames.shape[:2]
        given = conditioning_frames(self.cfg.ctrlv, T)
        renders = self.render_batch(batch, given).to(acc.device)  # box frames, the generation target
        with torch.no_grad():
            lat = vae.encode(renders.flatten(0, 1).to(self.weight_dtype)).latent_dist
            shape = (B, T, *lat.mean.shape[1:])
            z0 = (lat.sample(generator=generator) * self.parts.latent_scale).float().view(shape)
            box_latents = lat.mode().view(shape)[:, given]
        frame0 = frames[:, 0].to(self.weight_dtype)
        embeds = self.conditioner.clip_embeds(frame0)
        cond = compose_conditioning(self.conditioner.cond_latents(frame0, generator), box_latents, given, T)
        embeds, flat = self.conditioner.apply_dropout(embeds, cond.flatten(1, 2), generator)
        cond = flat.view_as(cond)
        time_ids = self.conditioner.time_ids(B, acc.device)
        with acc.autocast():
            loss, _, sigma = self.diff_loss(self.unet, z0, cond, embeds, time_ids, generator)
        terms = {"loss_diff": loss, "loss": loss}
        self.check_finite(terms, sigma)
        return loss, {k: float(v.detach()) for k, v in terms.items()} | {"sigma": float(sigma.mean())}
