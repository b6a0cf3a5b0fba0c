"""The two losses of the LSA objective: DiffusionLoss (Eq. 2) and SemanticAlignmentLoss (Eq. 3-5)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainers import edm

VARIANTS = ("global", "box", "hybrid")


class DiffusionLoss:
    """EDM-preconditioned v-prediction loss of SVD. Returns (loss, z0_hat, sigma)."""

    def __init__(self, sigma_sampler: edm.SigmaSampler):
        self.sigma_sampler = sigma_sampler

    def __call__(self, unet, z0, cond_latents, clip_embeds, time_ids, generator):
        B = z0.shape[0]
        sigma = self.sigma_sampler(B, generator).to(z0.device)
        eps = torch.randn(z0.shape, generator=generator).to(z0)
        s = sigma.view(B, 1, 1, 1, 1)
        x_t = z0 + s * eps
        unet_in = torch.cat([edm.c_in(s) * x_t, cond_latents.to(x_t)], dim=2)
        dtype = next(unet.parameters()).dtype
        F_out = unet(unet_in.to(dtype), edm.c_noise(sigma).to(dtype), encoder_hidden_states=clip_embeds.to(dtype),
                     added_time_ids=time_ids.to(dtype)).sample
        z0_hat = edm.denoise(F_out.float(), x_t.float(), sigma.float())
        per_sample = edm.loss_weight(sigma.float()) * ((z0_hat - z0.float()) ** 2).mean(dim=(1, 2, 3, 4))
        return per_sample.mean(), z0_hat, sigma


def patch_mask(boxes, grid_hw, image_hw, variant: str = "hybrid", alpha: float = 10.0) -> torch.Tensor:
    """Eq. 4 on the DINOv2 patch grid: [T, gh, gw].

    boxes: per frame, [n,4] xyxy in pixels of an image of size image_hw = (H, W).
    A patch is "in" a box when it overlaps it at all (strictly: touching a border is not overlap).
    The whole frame is resized onto the gh x gw grid, so patch (u, v) covers rows
    [u H/gh, (u+1) H/gh) and columns [v W/gw, (v+1) W/gw) of the original image; this equals scaling
    the boxes to the DINOv2 input and dividing by the patch size.
    global: 1 everywhere; box: alpha in boxes, 0 elsewhere; hybrid: alpha in boxes, 1 elsewhere.
    """
    if variant not in VARIANTS:
        raise ValueError(f"loss.variant={variant!r}: valid are {VARIANTS}")
    gh, gw = grid_hw
    H, W = image_hw
    T = len(boxes)
    if variant == "global":
        return torch.ones(T, gh, gw)
    row_edges = torch.arange(gh + 1, dtype=torch.float64) * (H / gh)
    col_edges = torch.arange(gw + 1, dtype=torch.float64) * (W / gw)
    inside = torch.zeros(T, gh, gw, dtype=torch.bool)
    for j, b in enumerate(boxes):
        # on the CPU: the mask is small, and accelerate's loader hands over boxes on the GPU
        b = torch.as_tensor(b, dtype=torch.float64, device="cpu").reshape(-1, 4)
        if len(b) == 0:
            continue
        x1, x2 = b[:, 0].clamp(0, W), b[:, 2].clamp(0, W)
        y1, y2 = b[:, 1].clamp(0, H), b[:, 3].clamp(0, H)
        valid = (x2 > x1) & (y2 > y1)            # boxes outside the frame clip to nothing
        rows = (y1[:, None] < row_edges[None, 1:]) & (y2[:, None] > row_edges[None, :-1])
        cols = (x1[:, None] < col_edges[None, 1:]) & (x2[:, None] > col_edges[None, :-1])
        hit = rows[valid][:, :, None] & cols[valid][:, None, :]
        if len(hit):
            inside[j] = hit.any(0)
    if variant == "box":
        return inside.float() * alpha
    return torch.where(inside, torch.tensor(float(alpha)), torch.tensor(1.0))


class DinoFeatures:
    """DINOv2 patch tokens of frames in [-1,1]: [N,3,H,W] -> ([N, gh*gw, d], (gh, gw))."""

    def __init__(self, encoder, size="auto", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.encoder = encoder
        self.patch = int(encoder.config.patch_size)
        self.size = size
        self.n_skip = 1 + int(getattr(encoder.config, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def input_size(self, H: int, W: int) -> tuple[int, int]:
        if self.size == "auto" or self.size is None:
            p = self.patch   # nearest multiple of the patch size: 320x512 -> 322x518 (23x37 patches)
            return max(p, round(H / p) * p), max(p, round(W / p) * p)
        return int(self.size[0]), int(self.size[1])

    def grid(self, H: int, W: int) -> tuple[int, int]:
        h, w = self.input_size(H, W)
        return h // self.patch, w // self.patch

    def __call__(self, x: torch.Tensor):
        H, W = x.shape[-2:]
        h, w = self.input_size(H, W)
        x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)
        x = ((x + 1) / 2 - self.mean.to(x)) / self.std.to(x)
        dtype = next(self.encoder.parameters()).dtype
        tokens = self.encoder(pixel_values=x.to(dtype)).last_hidden_state[:, self.n_skip:]
        return tokens.float(), self.grid(H, W)


def set_channels_last(module: torch.nn.Module, on: bool = True) -> int:
    """Store the 2-D convolution weights of `module` channels-last (NHWC), the layout cuDNN's bf16
    kernels run in, so they are not transposed at every call (`on=False` restores NCHW). Conv3d
    weights (the temporal decoder's time convolutions) stay as they are: channels_last is a 4-D
    format. Returns how many weights were set."""
    layout = torch.channels_last if on else torch.contiguous_format
    n = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=layout)
            n += 1
    return n


CHECKPOINT_LEVELS = ("chunk", "blocks")


def _checkpoint_level(loss_cfg) -> str:
    level = loss_cfg.get("decode_checkpoint_level", "chunk")
    if level not in CHECKPOINT_LEVELS:
        raise ValueError(f"loss.decode_checkpoint_level={level!r}: valid are {', '.join(CHECKPOINT_LEVELS)}")
    return level


def chunk_checkpoint(loss_cfg) -> bool:
    """Whether each decoded chunk is recomputed whole in the backward pass (decode_checkpoint at chunk level)."""
    return bool(loss_cfg.decode_checkpoint) and _checkpoint_level(loss_cfg) == "chunk"


def block_checkpoint(loss_cfg) -> bool:
    """Whether the decoder checkpoints its own mid and up blocks (decode_checkpoint at blocks level):
    finer than a chunk, so a larger chunk may fit; conv_in and the output layers keep their activations."""
    return bool(loss_cfg.decode_checkpoint) and _checkpoint_level(loss_cfg) == "blocks"


def set_decoder_block_checkpointing(vae, on: bool) -> None:
    """diffusers' gradient checkpointing of the temporal decoder's blocks (the encoder runs without
    gradients, so only the decoder is affected)."""
    vae.enable_gradient_checkpointing() if on else vae.disable_gradient_checkpointing()


def set_decoder_attention(vae, kind: str) -> None:
    """The temporal VAE's attention (the decoder's mid block): sdpa = diffusers' AttnProcessor2_0
    (F.scaled_dot_product_attention, its default), eager = AttnProcessor (explicit matmuls + softmax)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    procs = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}
    if kind not in procs:
        raise ValueError(f"loss.decode_attention={kind!r}: valid are {', '.join(procs)}")
    vae.set_attn_processor(procs[kind]())


def decoder_attention(vae) -> str:
    """Which of set_decoder_attention's kinds the VAE uses now (or the processor's class name)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    kinds = {type(p) for p in vae.attn_processors.values()}
    return {frozenset({AttnProcessor2_0}): "sdpa", frozenset({AttnProcessor}): "eager"}.get(
        frozenset(kinds), ",".join(sorted(k.__name__ for k in kinds)))


def decode_with_grad(vae, z0_hat: torch.Tensor, latent_scale: float, chunk: int = 8,
                     use_checkpoint: bool = False, channels_last: bool = False) -> torch.Tensor:
    """Decode z0_hat [B,T,4,h,w] with the frozen temporal decoder, keeping the graph: [B,T,3,H,W].

    Frames are decoded `chunk` at a time (as the SVD pipeline does at inference); with
    `use_checkpoint` each chunk's activations are recomputed in the backward pass; with
    `channels_last` the latents enter the decoder in NHWC (use with `set_channels_last(vae.decoder)`).
    """
    B, T = z0_hat.shape[:2]
    dtype = vae.dtype
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run(z, n):
        return vae.decode(z.to(dtype).contiguous(memory_format=layout), num_frames=n).sample

    outs = []
    for b in range(B):
        z = z0_hat[b] / latent_scale
        for s in range(0, T, chunk):
            zc = z[s:s + chunk]
            n = zc.shape[0]
            outs.append(checkpoint(run, zc, n, use_reentrant=False) if use_checkpoint else run(zc, n))
    return torch.cat(outs).float().view(B, T, *outs[0].shape[1:])


FEAT_REDUCTIONS = ("mean", "patch_sum", "frame_sum")
FEAT_MASKS = ("diff", "squared")


class SemanticAlignmentLoss:
    """L_feat = E_{i,j} || (f_gt - f_gen) (.) m ||^2  (Eq. 5).

    Eq. 5 does not fix the reduction nor how the mask meets the square (docs/protocol.md, "Feature
    loss scale"); two keys choose:
      reduction  mean (default): over videos, frames, patches and feature channels | patch_sum: sum
                 over the d channels of a patch, mean over the rest | frame_sum: the squared norm of
                 the whole frame (sum over patches and channels), mean over videos and frames
      mask       diff (default): m multiplies the difference before squaring, as Eq. 5 is written, so
                 a box patch weighs alpha^2 | squared: m multiplies the squared difference (alpha)
    The real frames' features are computed under no_grad.
    """

    def __init__(self, encoder: DinoFeatures, variant: str = "hybrid", alpha: float = 10.0,
                 cache_real: bool = False, reduction: str = "mean", mask: str = "diff"):
        if variant not in VARIANTS:
            raise ValueError(f"loss.variant={variant!r}: valid are {VARIANTS}")
        if reduction not in FEAT_REDUCTIONS:
            raise ValueError(f"loss.feat_reduction={reduction!r}: valid are {', '.join(FEAT_REDUCTIONS)}")
        if mask not in FEAT_MASKS:
            raise ValueError(f"loss.feat_mask={mask!r}: valid are {', '.join(FEAT_MASKS)}")
        self.encoder, self.variant, self.alpha = encoder, variant, alpha
        self.reduction, self.mask = reduction, mask
        # optional per-clip cache of f_gt (loss.real_feature_cache): the real frames and the frozen
        # encoder are the same every epoch, so their features are too. Kept on the CPU in the
        # encoder's dtype: 25 x 851 x 768 values = 33 MB per clip in bf16 at 320x512.
        self.cache_real = cache_real
        self.cache: dict = {}

    def real_features(self, x0: torch.Tensor, keys=None):
        """f_gt [B*T, P, d] and the patch grid, from the cache when every clip of the batch is in it."""
        B, T = x0.shape[:2]
        if self.cache_real and keys is not None and all(k in self.cache for k in keys):
            f_gt = torch.cat([self.cache[k] for k in keys]).to(x0.device, non_blocking=True).float()
            return f_gt, self.encoder.grid(*x0.shape[-2:])
        with torch.no_grad():
            f_gt, grid = self.encoder(x0.flatten(0, 1))
        if self.cache_real and keys is not None:
            dtype = next(self.encoder.encoder.parameters()).dtype
            for k, f in zip(keys, f_gt.view(B, T, *f_gt.shape[1:])):
                self.cache[k] = f.to("cpu", dtype)
        return f_gt, grid

    def __call__(self, x_hat: torch.Tensor, x0: torch.Tensor, boxes, keys=None) -> torch.Tensor:
        """x_hat, x0: [B,T,3,H,W] in [-1,1]; boxes: per video, per frame [n,4] xyxy pixels of x0.
        keys: one hashable per video naming its real frames (clip and frame indices), for the cache."""
        B, T, _, H, W = x0.shape
        f_gt, grid = self.real_features(x0, keys)
        f_gen, _ = self.encoder(x_hat.flatten(0, 1))
        m = torch.stack([patch_mask(boxes[i], grid, (H, W), self.variant, self.alpha) for i in range(B)])
        m = m.to(f_gen.device).view(B * T, grid[0] * grid[1], 1)
        sq = ((f_gt - f_gen) * m) ** 2 if self.mask == "diff" else (f_gt - f_gen) ** 2 * m
        if self.reduction == "patch_sum":
            return sq.sum(-1).mean()
        if self.reduction == "frame_sum":
            return sq.sum((-2, -1)).mean()
        return sq.mean()


def select_frames(T: int, decode_frames: str) -> list[int]:
    """`all`, or `every_k:<k>` (an explicit approximation, reported in the run's config)."""
    if decode_frames in (None, "all"):
        return list(range(T))
    if isinstance(decode_frames, str) and decode_frames.startswith("every_k:"):
        k = int(decode_frames.split(":", 1)[1])
        return list(range(0, T, max(1, k)))
    raise ValueError(f"loss.decode_frames={decode_frames!r}: valid are 'all' or 'every_k:<k>'")


def objective_weights(epoch: int, feat_from_epoch, diff_weight: float, lambda_feat: float):
    """(weight of L_diff, weight of L_feat) in this epoch for the joint / staged / diffusion schedules."""
    if feat_from_epoch is None or epoch < feat_from_epoch:
        return 1.0, 0.0
    if not math.isfinite(lambda_feat):
        raise ValueError(f"loss.lambda_feat must be finite, got {lambda_feat}")
    return diff_weight, lambda_feat
