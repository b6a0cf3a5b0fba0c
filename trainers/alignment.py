"""Representation alignment as the feature loss of the objective: REPA and VideoREPA-TRD.

`loss.variant=repa|trd` replaces LSA's decoded-frame loss by an alignment of the denoiser's own hidden
state with DINOv2 patch features of the clean frames (Table VII, docs/trainer.md):
  - a forward hook takes the output of one denoiser block (`loss.align.block`, a module name of the
    U-Net such as `down_blocks.1` or `mid_block`) during the diffusion step: no second forward, no decode;
  - a projector MLP (REPA's build_mlp: Linear-SiLU-Linear-SiLU-Linear, width `loss.align.projector_dim`)
    maps each hidden token to DINOv2's feature width; it trains with its own AdamW (same lr, betas and
    weight decay as the denoiser's, stepped with it) and is saved in every checkpoint beside
    accelerate's state (`alignment_projector.pt`);
  - the math is `repa_loss` / `trd_loss` in trainers/losses.py; `loss.align.mask` applies LSA's Eq. 4
    mask (`loss.alpha` inside boxes) to their patch terms (global = the published losses).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from data.cli import ConfigKeyError, InputError
from trainers.losses import DinoFeatures, SemanticAlignmentLoss, patch_mask, repa_loss, trd_loss

ALIGN_VARIANTS = ("repa", "trd")
ALIGN_MASKS = ("global", "box", "hybrid")
PROJECTOR_FILE = "alignment_projector.pt"
log = logging.getLogger(__name__)


def is_alignment(variant) -> bool:
    return variant in ALIGN_VARIANTS


def find_block(net: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule `name` of the denoiser, also inside wrappers (peft's LoRA model prefixes the
    names with base_model.model.; DDP with module.)."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        pass
    found = [m for n, m in net.named_modules() if n.endswith("." + name)]
    if len(found) != 1:
        blocks = [n for n, _ in net.named_modules() if n.count(".") <= 1 and "blocks" in n]
        raise ConfigKeyError(
            f"loss.align.block={name!r}: no single module of that name in {type(net).__name__}; e.g. {blocks[:8]}"
        )
    return found[0]


def build_projector(c_in: int, width: int, d_out: int) -> torch.nn.Sequential:
    """REPA's projector MLP (models/sit.py, build_mlp)."""
    return torch.nn.Sequential(
        torch.nn.Linear(c_in, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, width),
        torch.nn.SiLU(),
        torch.nn.Linear(width, d_out),
    )


class HiddenState:
    """A forward hook on one block, holding its output (the hidden state, graph kept) while active."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        # diffusers' down blocks return (hidden_states, residual states); mid and up blocks a tensor
        self.value = output[0] if isinstance(output, tuple) else output


class RepresentationAlignmentLoss(SemanticAlignmentLoss):
    """REPA (`repa`) or VideoREPA's Token Relation Distillation (`trd`) on a hooked hidden state.

    Inherits the real-frame side of SemanticAlignmentLoss (DINOv2 patch tokens of the clean frames
    under no_grad, the optional per-clip cache, `encoder`): the target of both losses is the frozen
    encoder's features of the real frames, as in REPA and VideoREPA. Called as
    `terms = loss(hidden, x0, boxes, keys)` with `hidden` [B*T, C, h, w] the block's output;
    returns loss_feat (the alignment loss, weighted by loss.align.coeff in the objective) and, for trd,
    its spatial / temporal parts."""

    def __init__(
        self,
        encoder: DinoFeatures,
        variant: str,
        block: str,
        projector_dim: int,
        margin: float = 0.1,
        mask: str = "global",
        alpha: float = 10.0,
        cache_real: bool = False,
        seed: int = 0,
        optim: dict | None = None,
    ):
        if variant not in ALIGN_VARIANTS:
            raise ConfigKeyError(f"loss.variant={variant!r}: the alignment losses are {ALIGN_VARIANTS}")
        if mask not in ALIGN_MASKS:
            raise ConfigKeyError(f"loss.align.mask={mask!r}: valid are {', '.join(ALIGN_MASKS)}")
        super().__init__(encoder, "global", alpha, cache_real=cache_real)
        self.variant, self.block, self.projector_dim = variant, block, int(projector_dim)
        self.margin, self.align_mask, self.seed = float(margin), mask, int(seed)
        self.optim = dict(optim or {})  # lr, weight_decay, betas, max_grad_norm of train.*
        self.projector: torch.nn.Module | None = None  # built at the first aligned step (its input width)
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending: dict | None = None  # a checkpoint's projector, loaded before the projector exists

    # ---------------------------------------------------------------- the hidden state
    @contextlib.contextmanager
    def capture(self, net: torch.nn.Module):
        """Within the block: the hook is on `loss.align.block` of `net`; yields the HiddenState."""
        hidden = HiddenState()
        handle = find_block(net, self.block).register_forward_hook(hidden)
        try:
            yield hidden
        finally:
            handle.remove()

    # ---------------------------------------------------------------- the projector
    def ensure_projector(self, c_in: int, d_out: int, device) -> torch.nn.Module:
        if self.projector is None:
            with torch.random.fork_rng(devices=[]):  # its init from train.seed, not the global RNG
                torch.manual_seed(self.seed)
                self.projector = build_projector(c_in, self.projector_dim, d_out).to(device)
            o = self.optim
            self.optimizer = torch.optim.AdamW(
                self.projector.parameters(),
                lr=float(o.get("lr", 1e-4)),
                weight_decay=float(o.get("weight_decay", 0.0)),
                betas=tuple(o.get("betas", (0.9, 0.999))),
            )
            if self.pending is not None:
                self._load(self.pending)
                self.pending = None
        first = self.projector[0]
        if first.in_features != c_in:
            raise ConfigKeyError(
                f"loss.align.block={self.block}: hidden width {c_in}, but the projector takes {first.in_features}"
            )
        return self.projector

    def tokens(self, hidden: torch.Tensor, grid: tuple[int, int], d_out: int) -> torch.Tensor:
        """Projected denoiser tokens on DINOv2's patch grid: [N, gh*gw, d_out] from [N, C, h, w]."""
        if hidden.dim() != 4:
            raise ConfigKeyError(
                f"loss.align.block={self.block}: expected a [frames, channels, h, w] hidden state, "
                f"got shape {tuple(hidden.shape)}"
            )
        if tuple(hidden.shape[-2:]) != tuple(grid):
            # the block's token grid (latent / 2^k) differs from DINOv2's patch grid (frame / 14):
            # the hidden feature map is resized bilinearly onto DINOv2's grid BEFORE the projector, so
            # token p of both sides covers the same image region (REPA's SiT grid equals DINOv2's by
            # construction; VideoREPA resizes with a strided convolution)
            hidden = F.interpolate(hidden, size=tuple(grid), mode="bilinear", align_corners=False)
        x = hidden.flatten(2).transpose(1, 2)  # [N, P, C]
        proj = self.ensure_projector(x.shape[-1], d_out, x.device)
        return proj(x)

    # ---------------------------------------------------------------- the loss
    def __call__(self, hidden: torch.Tensor, x0: torch.Tensor, boxes, keys=None) -> dict:
        B, T, _, H, W = x0.shape
        f, grid = self.real_features(x0, keys)  # [B*T, P, d], no grad
        h = self.tokens(hidden, grid, f.shape[-1])
        if h.shape[0] != B * T:
            raise ConfigKeyError(f"loss.align.block={self.block}: {h.shape[0]} hidden frames for {B}x{T} video frames")
        m = None
        if self.align_mask != "global":
            m = torch.stack([patch_mask(boxes[i], grid, (H, W), self.align_mask, self.alpha) for i in range(B)])
            m = m.to(h.device).view(B * T, grid[0] * grid[1])
        if self.variant == "repa":
            return {"loss_feat": repa_loss(h, f, m)}
        P = grid[0] * grid[1]
        L, spatial, temporal = trd_loss(
            h.view(B, T, P, -1), f.view(B, T, P, -1), self.margin, None if m is None else m.view(B, T, P)
        )
        return {"loss_feat": L, "loss_trd_spatial": spatial, "loss_trd_temporal": temporal}

    # ---------------------------------------------------------------- its optimizer step
    def step(self, acc, optimizer) -> None:
        """The projector's optimizer step, at the denoiser's optimizer steps (accumulation: when the
        gradients sync), with the denoiser's current learning rate; gradients averaged over processes
        (the projector is outside the DDP wrapper) and clipped to train.max_grad_norm."""
        if self.projector is None or not acc.sync_gradients:
            return
        params = [p for p in self.projector.parameters() if p.grad is not None]
        if not params:
            return
        if acc.num_processes > 1:
            for p in params:
                p.grad = acc.reduce(p.grad, reduction="mean")
        if self.optim.get("max_grad_norm"):
            torch.nn.utils.clip_grad_norm_(params, float(self.optim["max_grad_norm"]))
        lr = optimizer.param_groups[0]["lr"]
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict | None:
        if self.projector is None:
            return self.pending
        return {
            "variant": self.variant,
            "block": self.block,
            "shape": [self.projector[0].in_features, self.projector_dim, self.projector[-1].out_features],
            "projector": self.projector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _load(self, state: dict) -> None:
        shape = [self.projector[0].in_features, self.projector_dim, self.projector[-1].out_features]
        if list(state["shape"]) != shape or state["block"] != self.block:
            raise InputError(
                f"loss.align.block={self.block} loss.align.projector_dim={self.projector_dim}: the checkpoint's "
                f"projector is of block {state['block']} with shape {state['shape']}, this run's {shape}"
            )
        self.projector.load_state_dict(state["projector"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, folder: Path) -> Path | None:
        state = self.state_dict()
        if state is None:
            return None
        path = Path(folder) / PROJECTOR_FILE
        torch.save(state, path)
        return path

    def load(self, folder: Path) -> bool:
        """The projector of a checkpoint folder; False (a fresh projector) when it has none, e.g. the
        diffusion-only first epoch a staged row starts from."""
        path = Path(folder) / PROJECTOR_FILE
        if not path.exists():
            self.pending = None
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        if self.projector is None:
            self.pending = state
        else:
            self._load(state)
        return True


def build_feature_loss(cfg, encoder: DinoFeatures):
    """The objective's feature loss for `cfg.loss.variant`: LSA's SemanticAlignmentLoss (global | box |
    hybrid) or a RepresentationAlignmentLoss (repa | trd)."""
    loss = cfg.loss
    if not is_alignment(loss.variant):
        return SemanticAlignmentLoss(
            encoder,
            loss.variant,
            loss.alpha,
            cache_real=bool(loss.real_feature_cache),
            reduction=loss.get("feat_reduction", "mean"),
            mask=loss.get("feat_mask", "diff"),
        )
    from trainers.backbones import backbone_name

    if backbone_name(cfg.model) != "svd":
        # LTX's transformer hides its token layout (latent frames x patchified grid, 8 video frames per
        # latent frame) behind the backbone interface, which has no map from tokens to video frames
        raise ConfigKeyError(
            f"loss.variant={loss.variant}: the alignment losses are implemented for the SVD U-Net only, "
            f"not model.backbone={backbone_name(cfg.model)} (trainers/backbones/ has no token-to-frame map)"
        )
    if str(cfg.train.mixed_precision) == "fp16":
        raise ConfigKeyError(
            f"train.mixed_precision=fp16: loss.variant={loss.variant} trains its projector outside "
            "accelerate's fp16 gradient scaler; use bf16 or no"
        )
    t, a = cfg.train, loss.align
    return RepresentationAlignmentLoss(
        encoder,
        loss.variant,
        a.block,
        a.projector_dim,
        margin=a.margin,
        mask=a.mask,
        alpha=loss.alpha,
        cache_real=bool(loss.real_feature_cache),
        seed=int(t.seed),
        optim=dict(
            lr=float(t.lr),
            weight_decay=float(t.weight_decay),
            betas=tuple(t.adam_betas),
            max_grad_norm=t.max_grad_norm,
        ),
    )
