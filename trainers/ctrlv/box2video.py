"""Ctrl-V stage 2, Box2Video: a spatio-temporal ControlNet on a frozen SVD video U-Net.

The ControlNet is a copy of the U-Net's encoder (conv_in, time / added-time embeddings, down blocks,
mid block: diffusers' spatio-temporal blocks, weights copied from the backbone) that also receives the
VAE latents of the rendered box frames through a conditioning embedding added to its conv_in features.
Each skip feature and the mid-block output go through a zero-initialised 1x1 conv and are added to the
backbone's skip connections and mid-block output (ControlNet, Zhang et al. 2023; Ctrl-V's controlnet.py
does the same for SVD). At initialisation every residual is exactly zero, so the controlled U-Net
equals the backbone.

diffusers' UNetSpatioTemporalConditionModel has no residual inputs, so `ControlledUNet` adds them with
forward hooks for the duration of a `with` block: the stock StableVideoDiffusionPipeline (inference)
and the shared DiffusionLoss (training) then run unchanged on the backbone.
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding, zero_module
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import nn

from trainers.ctrlv.common import CtrlVTrainer
from trainers.ctrlv.render import encode_box_latents
from trainers.loop import freeze
from trainers.models import load_svd

# U-Net config keys the ControlNet shares (its encoder is built exactly like the U-Net's).
_SHARED_KEYS = (
    "in_channels",
    "down_block_types",
    "block_out_channels",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "num_attention_heads",
    "num_frames",
)


def _per_block(value, n):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


class SpatioTemporalControlNet(ModelMixin, ConfigMixin):
    """ControlNet for UNetSpatioTemporalConditionModel. forward(...) -> (down residuals, mid residual)."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        conditioning_channels: int = 4,
        conditioning_embedding_channels: tuple = (64,),
        down_block_types: tuple = ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        block_out_channels: tuple = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=(5, 10, 20, 20),
        num_frames: int = 25,
    ):
        super().__init__()
        n = len(down_block_types)
        heads, cross = _per_block(num_attention_heads, n), _per_block(cross_attention_dim, n)
        layers, tlayers = _per_block(layers_per_block, n), _per_block(transformer_layers_per_block, n)
        b0 = block_out_channels[0]
        temb = b0 * 4
        # --- the U-Net's encoder (same construction as UNetSpatioTemporalConditionModel.__init__)
        self.conv_in = nn.Conv2d(in_channels, b0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(b0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(b0, temb)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb)
        self.down_blocks = nn.ModuleList()
        out_ch = b0
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=tlayers[i],
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=temb,
                    add_downsample=i < n - 1,
                    resnet_eps=1e-5,
                    cross_attention_dim=cross[i],
                    num_attention_heads=heads[i],
                    resnet_act_fn="silu",
                )
            )
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=temb,
            transformer_layers_per_block=tlayers[-1],
            cross_attention_dim=cross[-1],
            num_attention_heads=heads[-1],
        )
        # --- the control branch: box-frame latents in, zero-initialised residuals out
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=b0,
            conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_channels),
        )
        res_channels = [b0]
        for i in range(n):
            res_channels += [block_out_channels[i]] * (layers[i] + (1 if i < n - 1 else 0))
        self.controlnet_down_blocks = nn.ModuleList(zero_module(nn.Conv2d(c, c, kernel_size=1)) for c in res_channels)
        self.controlnet_mid_block = zero_module(
            nn.Conv2d(block_out_channels[-1], block_out_channels[-1], kernel_size=1)
        )

    @classmethod
    def from_unet(cls, unet, conditioning_embedding_channels=(64,)) -> SpatioTemporalControlNet:
        """A ControlNet whose encoder is a copy of `unet`'s (weights included)."""
        cfg = unet.config
        net = cls(
            conditioning_channels=int(cfg.out_channels),
            conditioning_embedding_channels=tuple(int(c) for c in conditioning_embedding_channels),
            **{k: cfg[k] for k in _SHARED_KEYS},
        )
        result = net.load_state_dict(unet.state_dict(), strict=False)
        not_copied = [k for k in result.missing_keys if not k.startswith("controlnet_")]
        if not_copied:
            raise RuntimeError(f"ControlNet keys missing in the U-Net (diffusers layout changed?): {not_copied[:5]}")
        return net  # float32 (the copied weights are cast on load); the caller picks the dtype

    @property
    def num_residuals(self) -> int:
        return len(self.controlnet_down_blocks)

    def forward(
        self, sample, timestep, encoder_hidden_states, added_time_ids, controlnet_cond, conditioning_scale: float = 1.0
    ):
        """sample [B,T,C,h,w] (noisy latents + frame-0 latents, as the U-Net gets them); controlnet_cond
        [B,T,4,h,w] box-frame latents -> (tuple of [B*T,c,h',w'] skip residuals, mid residual)."""
        B, T = sample.shape[:2]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep], device=sample.device)
        t = t.reshape(-1).to(sample.device).expand(B) if t.numel() == 1 else t.to(sample.device)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        added = self.add_time_proj(added_time_ids.flatten()).reshape(B, -1).to(emb.dtype)
        emb = (emb + self.add_embedding(added)).repeat_interleave(T, dim=0)
        context = encoder_hidden_states.repeat_interleave(T, dim=0)
        h = self.conv_in(sample.flatten(0, 1))
        h = h + self.controlnet_cond_embedding(controlnet_cond.flatten(0, 1).to(h.dtype))
        indicator = torch.zeros(B, T, dtype=h.dtype, device=h.device)
        skips = (h,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
            else:
                h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator)
            skips += res
        h = self.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        down = tuple(zc(s) * conditioning_scale for s, zc in zip(skips, self.controlnet_down_blocks))
        return down, self.controlnet_mid_block(h) * conditioning_scale


def split_for_up_blocks(residuals, unet) -> list[list[torch.Tensor]]:
    """The skip residuals each up block consumes, in the order UNetSpatioTemporalConditionModel hands
    them out (the last len(block.resnets) of those left)."""
    rest, out = list(residuals), []
    for block in unet.up_blocks:
        n = len(block.resnets)
        out.append(rest[-n:])
        rest = rest[:-n]
    if rest or sum(len(o) for o in out) != len(residuals):
        raise ValueError(
            f"the ControlNet gives {len(residuals)} skip residuals, the U-Net's up blocks take "
            f"{sum(len(b.resnets) for b in unet.up_blocks)}: was it built from another U-Net config?"
        )
    return out


class ControlledUNet:
    """`with ControlledUNet(unet, controlnet, box_latents):` every call of `unet` also runs `controlnet`
    on the same inputs plus `box_latents` [B,T,4,h,w] and adds its residuals to the U-Net's skip
    connections and mid-block output. When the U-Net is called with a doubled batch (classifier-free
    guidance: unconditional half first, as StableVideoDiffusionPipeline does), the unconditional half
    gets zero box latents (`uncond="zeros"`, Ctrl-V's pipeline) or the same ones (`"same"`)."""

    def __init__(
        self, unet, controlnet, box_latents: torch.Tensor, conditioning_scale: float = 1.0, uncond: str = "zeros"
    ):
        if uncond not in ("zeros", "same"):
            raise ValueError(f"ctrlv.inference.uncond_control={uncond!r}: valid are 'zeros', 'same'")
        self.unet, self.controlnet, self.box_latents = unet, controlnet, box_latents
        self.scale, self.uncond = float(conditioning_scale), uncond
        self._handles, self._skips, self._mid = [], None, None

    def __enter__(self):
        self._handles.append(self.unet.register_forward_pre_hook(self._run_controlnet, with_kwargs=True))
        self._handles.append(self.unet.mid_block.register_forward_hook(self._add_mid))
        for i, block in enumerate(self.unet.up_blocks):
            self._handles.append(block.register_forward_pre_hook(partial(self._add_skips, i), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles, self._skips, self._mid = [], None, None
        return False

    def _batched(self, n: int) -> torch.Tensor:
        c = self.box_latents
        if c.shape[0] == n:
            return c
        if 2 * c.shape[0] == n:
            return torch.cat([torch.zeros_like(c) if self.uncond == "zeros" else c, c])
        raise ValueError(f"box latents for {c.shape[0]} videos, the U-Net is called with a batch of {n}")

    def _run_controlnet(self, module, args, kwargs):
        names = ("sample", "timestep", "encoder_hidden_states", "added_time_ids")
        given = dict(zip(names, args)) | {k: kwargs[k] for k in names if k in kwargs}
        sample = given["sample"]
        dtype = next(self.controlnet.parameters()).dtype
        down, mid = self.controlnet(
            sample.to(dtype),
            given["timestep"],
            given["encoder_hidden_states"].to(dtype),
            given["added_time_ids"].to(dtype),
            self._batched(sample.shape[0]).to(sample.device, dtype),
            conditioning_scale=self.scale,
        )
        self._skips, self._mid = split_for_up_blocks(down, self.unet), mid
        return None

    def _add_mid(self, module, args, output):
        return output + self._mid.to(output.dtype)

    def _add_skips(self, i, module, args, kwargs):
        if "res_hidden_states_tuple" not in kwargs:
            raise RuntimeError(
                "the U-Net no longer passes res_hidden_states_tuple by keyword (diffusers changed): "
                "ControlledUNet cannot add the ControlNet residuals"
            )
        res = kwargs["res_hidden_states_tuple"]
        kwargs["res_hidden_states_tuple"] = tuple(r + a.to(r.dtype) for r, a in zip(res, self._skips[i]))
        return args, kwargs


class Box2VideoTrainer(CtrlVTrainer):
    """Trains the ControlNet (only) with the diffusion loss on real clips, the frozen backbone U-Net
    (`ctrlv.backbone`) denoising under its control; the box frames are the clip's ground-truth boxes."""

    stage = "box2video"
    export_name = "controlnet"

    def load_parts(self):
        backbone = self.cfg.ctrlv.backbone
        return load_svd(self.cfg.model, unet_path=str(backbone) if backbone else None)

    def build_model(self, parts):
        cfg = self.cfg
        if cfg.adapter.name != "unet":
            raise ValueError(f"adapter={cfg.adapter.name}: Box2Video trains the whole ControlNet (adapter=unet)")
        net = SpatioTemporalControlNet.from_unet(parts.unet, cfg.ctrlv.controlnet.cond_embedding_channels)
        self.backbone = freeze(parts.unet, self.acc.device, self.weight_dtype)
        if cfg.train.grad_checkpointing:
            self.backbone.enable_gradient_checkpointing()
            net.enable_gradient_checkpointing()
        return net.train()

    def compute_loss(self, batch, generator):
        acc, vae = self.acc, self.parts.vae
        frames = batch["frames"].to(acc.device)  # [B,T,3,H,W] in [-1,1]
        B, T = frames.shape[:2]
        with torch.no_grad():
            lat = vae.encode(frames.flatten(0, 1).to(self.weight_dtype)).latent_dist
            z0 = (lat.sample(generator=generator) * self.parts.latent_scale).float().view(B, T, *lat.mean.shape[1:])
            boxes = encode_box_latents(vae, self.render_batch(batch).to(acc.device))
        embeds, cond, time_ids = self.conditioner(frames.to(self.weight_dtype), generator, train=True)
        c = self.cfg.ctrlv
        with acc.autocast(), ControlledUNet(self.backbone, self.unet, boxes, c.controlnet.conditioning_scale):
            loss, _, sigma = self.diff_loss(self.backbone, z0, cond, embeds, time_ids, generator)
        terms = {"loss_diff": loss, "loss": loss}
        self.check_finite(terms, sigma)
        return loss, {k: float(v.detach()) for k, v in terms.items()} | {"sigma": float(sigma.mean())}
