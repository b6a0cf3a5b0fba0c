"""The LSA objective in one place: L = w L_diff + lambda L_feat, with the schedule's weights.

One call denoises (L_diff, Eq. 2), decodes the predicted clean latent z0_hat to frames x_hat, takes
DINOv2 features of x_hat and of the real frames, weighs their difference with the patch mask M and
reduces it to L_feat (Eq. 3-5). The training loop calls the objective and knows nothing of LSA.
With `loss.variant=repa|trd` the feature loss is a representation alignment instead
(trainers/alignment.py): the denoiser's hidden state at one block, taken by a hook during the same
diffusion forward, projected and aligned with DINOv2 features of the clean frames; nothing is decoded.
"""

from __future__ import annotations

import contextlib
import math

import torch

from trainers.alignment import RepresentationAlignmentLoss, is_alignment
from trainers.decoder_speed import chunk_checkpoint, decode_with_grad
from trainers.losses import DiffusionLoss, SemanticAlignmentLoss


def select_frames(T: int, decode_frames: str) -> list[int]:
    """`all`, or `every_k:<k>` (an explicit approximation, reported in the run's config)."""
    if decode_frames in (None, "all"):
        return list(range(T))
    if isinstance(decode_frames, str) and decode_frames.startswith("every_k:"):
        k = int(decode_frames.split(":", 1)[1])
        return list(range(0, T, max(1, k)))
    raise ValueError(f"loss.decode_frames={decode_frames!r}: valid are 'all' or 'every_k:<k>'")


def objective_weights(epoch: int, feat_from_epoch, diff_weight: float, lambda_feat: float):
    """(w, lambda): the weights of L_diff and L_feat in this epoch for the joint / staged / diffusion
    schedules (L_feat is off before `feat_from_epoch`, and always when it is null)."""
    if feat_from_epoch is None or epoch < feat_from_epoch:
        return 1.0, 0.0
    if not math.isfinite(lambda_feat):
        raise ValueError(f"loss.lambda_feat must be finite, got {lambda_feat}")
    return diff_weight, lambda_feat


class LSAObjective:
    """L = w L_diff + lambda L_feat. Returns (L, terms, sigma); terms holds loss_diff, and while
    lambda > 0 also loss_feat and the weighted terms weighted_diff = w L_diff, weighted_feat =
    lambda L_feat (the pair the paper puts "on a comparable scale"), and loss = L.

    `loss_cfg` (w = diff_weight, lambda = lambda_feat, decode_*) and `schedule_cfg`
    (feat_from_epoch) are read at every call, so a change of those keys between steps (the perf
    sweeps of benchmark/perf/step.py) takes effect at the next step. `L_feat` may be None when the
    run never switches the feature loss on.
    """

    def __init__(
        self,
        L_diff: DiffusionLoss,
        L_feat: SemanticAlignmentLoss | None,
        vae,
        latent_scale: float,
        loss_cfg,
        schedule_cfg,
    ):
        self.L_diff, self.L_feat = L_diff, L_feat
        self.vae, self.latent_scale = vae, latent_scale
        self.loss_cfg, self.schedule_cfg = loss_cfg, schedule_cfg

    def weights(self, epoch: int) -> tuple[float, float]:
        """(w, lambda) in `epoch`; lambda is loss.align.coeff for the alignment losses (repa | trd)."""
        c = self.loss_cfg
        lam = c.align.coeff if is_alignment(c.get("variant")) else c.lambda_feat
        return objective_weights(epoch, self.schedule_cfg.feat_from_epoch, c.diff_weight, lam)

    @property
    def aligns(self) -> bool:
        """The feature loss is a representation alignment (REPA / TRD) on a hooked hidden state."""
        return isinstance(self.L_feat, RepresentationAlignmentLoss)

    def step_extra(self, acc, optimizer) -> None:
        """After the denoiser's optimizer step: the alignment projector's own step (no-op otherwise)."""
        if self.aligns:
            self.L_feat.step(acc, optimizer)

    def save_extra(self, folder) -> None:
        """Into a checkpoint folder: the alignment projector and its optimizer state, when there is one."""
        if self.aligns:
            self.L_feat.save(folder)

    def load_extra(self, folder) -> None:
        """From a checkpoint folder: the alignment projector (a fresh one when the folder has none)."""
        if self.aligns:
            self.L_feat.load(folder)

    def decode(self, z0_hat: torch.Tensor) -> torch.Tensor:
        """x_hat [B,T,3,H,W] from z0_hat [B,T,4,h,w], differentiable (the frozen temporal decoder)."""
        c = self.loss_cfg
        return decode_with_grad(
            self.vae, z0_hat, self.latent_scale, int(c.decode_chunk), chunk_checkpoint(c), bool(c.decode_channels_last)
        )

    def denoise(self, net, z0, cond, generator: torch.Generator):
        """(L_diff, z0_hat, sigma) of one noise draw; cond: (cond_latents, clip_embeds, time_ids)."""
        cond_latents, clip_embeds, time_ids = cond
        return self.L_diff(net, z0, cond_latents, clip_embeds, time_ids, generator)

    def decoded(self, z0_hat: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """x_hat of video frames `idx` (SVD: latent frame j is video frame j)."""
        return self.decode(z0_hat[:, idx])

    def __call__(self, net, z0, cond, frames, boxes, clips, epoch: int, generator: torch.Generator):
        """net: the denoiser (SVD U-Net); z0: clean latents [B,T,4,h,w]; cond: (cond_latents,
        clip_embeds, time_ids) of the conditioner; frames: the real clip [B,T,3,H,W] in [-1,1];
        boxes: per video, per frame [n,4] xyxy pixels of `frames`; clips: the dataset index of each
        video (keys of the real-feature cache); generator: all randomness of the step."""
        w, lambda_feat = self.weights(epoch)
        align = lambda_feat > 0 and self.aligns
        with self.L_feat.capture(net) if align else contextlib.nullcontext() as hidden:
            L_diff, z0_hat, sigma = self.denoise(net, z0, cond, generator)
        terms = {"loss_diff": L_diff}
        if align:  # REPA / TRD: the hooked hidden state against DINOv2 features of the real frames
            keys = [(int(i), tuple(range(frames.shape[1]))) for i in clips]
            terms.update(self.L_feat(hidden.value, frames, boxes, keys))
        elif lambda_feat > 0:
            idx = select_frames(frames.shape[1], self.loss_cfg.decode_frames)
            x_hat = self.decoded(z0_hat, idx)
            boxes = [[b[j] for j in idx] for b in boxes]
            keys = [(int(i), tuple(idx)) for i in clips]  # clip of the dataset, frames
            terms["loss_feat"] = self.L_feat(x_hat, frames[:, idx], boxes, keys)
        L = w * terms["loss_diff"] + (lambda_feat * terms["loss_feat"] if lambda_feat > 0 else 0.0)
        if lambda_feat > 0:
            terms["weighted_diff"] = w * terms["loss_diff"]
            terms["weighted_feat"] = lambda_feat * terms["loss_feat"]
        terms["loss"] = L
        return L, terms, sigma


class BackboneObjective(LSAObjective):
    """The same L = w L_diff + lambda L_feat for any backbone of trainers/backbones/ (LTX-Video): the
    backbone draws the noise level, predicts z0_hat in its own latent layout and decodes it (with the
    graph) to the video frames asked for; weights, frame selection, L_feat and the terms are the
    LSAObjective's. cond is the backbone's own conditioning (opaque here)."""

    def __init__(self, backbone, L_feat: SemanticAlignmentLoss | None, loss_cfg, schedule_cfg):
        super().__init__(None, L_feat, backbone.parts.vae, None, loss_cfg, schedule_cfg)
        self.backbone = backbone

    def denoise(self, net, z0, cond, generator: torch.Generator):
        out = self.backbone.diffusion_loss(net, z0, cond, generator)
        return out.loss, out.z0_hat, out.sigma

    def decoded(self, z0_hat: torch.Tensor, idx: list[int]) -> torch.Tensor:
        return self.backbone.decode(z0_hat, self.loss_cfg, idx)
