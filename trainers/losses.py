"""The two losses of the LSA objective: DiffusionLoss (Eq. 2) and SemanticAlignmentLoss (Eq. 3-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        F_out = unet(
            unet_in.to(dtype),
            edm.c_noise(sigma).to(dtype),
            encoder_hidden_states=clip_embeds.to(dtype),
            added_time_ids=time_ids.to(dtype),
        ).sample
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
        valid = (x2 > x1) & (y2 > y1)  # boxes outside the frame clip to nothing
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
            p = self.patch  # nearest multiple of the patch size: 320x512 -> 322x518 (23x37 patches)
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
        tokens = self.encoder(pixel_values=x.to(dtype)).last_hidden_state[:, self.n_skip :]
        return tokens.float(), self.grid(H, W)


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

    def __init__(
        self,
        encoder: DinoFeatures,
        variant: str = "hybrid",
        alpha: float = 10.0,
        cache_real: bool = False,
        reduction: str = "mean",
        mask: str = "diff",
    ):
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


# --------------------------------------------------------------------- representation alignment
# REPA (Yu et al., ICLR 2025) and VideoREPA's Token Relation Distillation (Zhang et al., NeurIPS 2025):
# the denoiser's own hidden state, projected by a small trained MLP, is aligned with a frozen vision
# foundation model's patch features of the CLEAN frames; nothing is decoded. The projector, the hook
# that takes the hidden state and the projector's optimizer are in trainers/alignment.py.


def repa_loss(h: torch.Tensor, f: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
    """L_REPA = mean over frames n and patches p of  -m_p cos(h_np, f_np)  (REPA's loss.py: `proj_loss`,
    the negative cosine similarity per patch, mean over patches and samples).

    h: projected denoiser tokens [N, P, d]; f: foundation-model patch features of the clean frames
    [N, P, d] (no gradient needed); m: optional per-patch weight [N, P] (LSA's Eq. 4 mask: alpha in
    boxes, 1 elsewhere for `hybrid`); None = 1 everywhere, the published loss."""
    cos = (F.normalize(h.float(), dim=-1) * F.normalize(f.float(), dim=-1)).sum(-1)  # [N, P]
    return -(cos if m is None else cos * m.to(cos)).mean()


def trd_loss(
    h: torch.Tensor, f: torch.Tensor, margin: float, m: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VideoREPA's Token Relation Distillation on one clip layout: (L_TRD, spatial part, temporal part).

    h, f: [B, T, P, d] projected denoiser tokens and foundation-model features of the clean frames.
    Both are L2-normalised per token; S[b, (t,i), (t',j)] = <x_ti, x_t'j> is the token-to-token
    similarity over ALL tokens of the clip (spatial pairs t = t', temporal pairs t != t'), and
        L_TRD = mean over b, (t,i), (t',j) of  m_ti relu(|S_d - S_f| - margin)
    (VideoREPA lora_trainer.py, loss `token_relation_distillation`: the same full Gram matrix, margin
    0.1 by default). m: optional weight of the row token (t,i) [B, T, P] (LSA's mask on the patch terms);
    None = the published loss. The spatial and temporal parts are the same mean restricted to the
    pairs of one frame and of two different frames (reported, not added: L_TRD already holds both)."""
    B, T, P, _ = h.shape
    hn = F.normalize(h.float(), dim=-1).reshape(B, T * P, -1)
    fn = F.normalize(f.float(), dim=-1).reshape(B, T * P, -1)
    gap = torch.relu((hn @ hn.transpose(1, 2) - fn @ fn.transpose(1, 2)).abs() - margin)  # [B, TP, TP]
    if m is not None:
        gap = gap * m.to(gap).reshape(B, T * P, 1)
    same = torch.arange(T, device=gap.device).repeat_interleave(P)
    same = same[:, None] == same[None, :]  # [TP, TP]: both tokens in one frame
    spatial = gap[:, same].mean()
    temporal = gap[:, ~same].mean() if T > 1 else gap.new_zeros(())
    return gap.mean(), spatial, temporal
