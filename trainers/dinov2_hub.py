"""DINOv2's official torch.hub checkpoint (`dinov2_vitb14_pretrain.pth`) as a transformers `Dinov2Model`.

facebookresearch/dinov2 (dinov2/models/vision_transformer.py, `DinoVisionTransformer`) saves a plain
state dict; transformers' `Dinov2Model` names the same tensors differently, and packs nothing:

  cls_token [1,1,D], mask_token [1,D], pos_embed [1,1+N,D]  -> embeddings.cls_token / mask_token / position_embeddings
  patch_embed.proj.{weight,bias}                            -> embeddings.patch_embeddings.projection.*
  blocks.L.norm1 / norm2                                    -> encoder.layer.L.norm1 / norm2
  blocks.L.attn.qkv.{weight,bias} [3D,D]                    -> the query / key / value projections (rows split in 3)
  blocks.L.attn.proj                                        -> the attention output projection
  blocks.L.ls1.gamma / ls2.gamma                            -> encoder.layer.L.layer_scale1 / layer_scale2.lambda1
  blocks.L.mlp.fc1 / fc2                                    -> encoder.layer.L.mlp.fc1 / fc2
  norm                                                      -> layernorm

The attention projections are called `attention.attention.{query,key,value}` and `attention.output.dense`
in transformers 4 (and in the hub's facebook/dinov2-base files) and `attention.{q,k,v,o}_proj` in
transformers 5; the converter targets whichever names the installed `Dinov2Model` has. The
architecture is read from the shapes: width D, depth, patch size, the position grid (518 / 14 = 37 for
the released models) and the MLP ratio; heads = D / 64 as in every DINOv2 release (ViT-S/B/L/g: 6, 12,
16, 24). Checkpoints with register tokens or the SwiGLU MLP (ViT-g) are refused by name. Every source
key is used and every target key filled, or the conversion fails listing them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from data.cli import InputError, MissingFile

HUB_SUFFIXES = (".pth", ".pt")
HEAD_DIM = 64  # every DINOv2 release: ViT-S/14 6 heads, B/14 12, L/14 16, g/14 24


class Dinov2ConversionError(InputError):
    """The file is not an official DINOv2 torch.hub state dict this converter maps."""


def is_hub_checkpoint(source: str | Path) -> bool:
    """A local file ending in .pth / .pt (a transformers model is a folder or a hub id)."""
    path = Path(str(source)).expanduser()
    return path.suffix in HUB_SUFFIXES and path.is_file()


def load_hub_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise MissingFile(f"{path}: no such DINOv2 checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise Dinov2ConversionError(
            f"{path}: not a torch state dict ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
        ) from e
    if isinstance(obj, Mapping) and "teacher" in obj and isinstance(obj["teacher"], Mapping):
        obj = obj["teacher"]  # a training checkpoint: the teacher is the released network
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise Dinov2ConversionError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return {str(k).removeprefix("backbone."): v for k, v in obj.items()}


def hub_config(src: Mapping[str, torch.Tensor]):
    """The Dinov2Config of an official state dict, read from its shapes."""
    from transformers import Dinov2Config

    need = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"]
    absent = [k for k in need if k not in src]
    if absent:
        raise Dinov2ConversionError(f"not a DINOv2 torch.hub state dict: missing {absent} (found {len(src)} keys)")
    if "register_tokens" in src:
        raise Dinov2ConversionError("a DINOv2 checkpoint with register tokens (*_reg4_*); use the plain release")
    if "blocks.0.mlp.w12.weight" in src:
        raise Dinov2ConversionError("a DINOv2 checkpoint with the SwiGLU MLP (ViT-g); only the fc1/fc2 MLP is mapped")
    if any(re.match(r"blocks\.\d+\.\d+\.", k) for k in src):
        raise Dinov2ConversionError("a chunked DINOv2 state dict (blocks.C.L.*); use the released file")
    hidden = int(src["cls_token"].shape[-1])
    depth = len({int(m.group(1)) for k in src if (m := re.match(r"blocks\.(\d+)\.", k))})
    patch = int(src["patch_embed.proj.weight"].shape[-1])
    grid = int(round((src["pos_embed"].shape[1] - 1) ** 0.5))
    if grid * grid != src["pos_embed"].shape[1] - 1:
        raise Dinov2ConversionError(f"pos_embed {tuple(src['pos_embed'].shape)} is not 1 + a square grid")
    mlp = int(src["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in src else 4 * hidden
    ratio = mlp // hidden if mlp % hidden == 0 else mlp / hidden  # the config wants an int where it is one
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=max(1, hidden // HEAD_DIM),
        mlp_ratio=ratio,
        patch_size=patch,
        image_size=grid * patch,
        num_channels=int(src["patch_embed.proj.weight"].shape[1]),
        qkv_bias="blocks.0.attn.qkv.bias" in src,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        use_swiglu_ffn=False,
    )


def _attention_names(target_keys) -> dict[str, str]:
    """The installed transformers' names of a layer's attention projections."""
    if "encoder.layer.0.attention.q_proj.weight" in target_keys:
        return {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj"}
    return {
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "o": "attention.output.dense",
    }


def convert_state_dict(src: Mapping[str, torch.Tensor], target_keys) -> dict[str, torch.Tensor]:
    """Official names -> the given Dinov2Model state-dict names; fails on any unused or unfilled key."""
    att = _attention_names(target_keys)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return src[key]

    for name, dst in (
        ("cls_token", "embeddings.cls_token"),
        ("mask_token", "embeddings.mask_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight"),
        ("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias"),
        ("norm.weight", "layernorm.weight"),
        ("norm.bias", "layernorm.bias"),
    ):
        if name in src:
            value = take(name)
            out[dst] = value.reshape(1, -1) if name == "mask_token" else value
    layers = sorted({int(m.group(1)) for k in src if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in layers:
        s, t = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            if f"{s}attn.qkv.{p}" in src:
                q, k, v = take(f"{s}attn.qkv.{p}").chunk(3, dim=0)  # qkv rows are [q; k; v]
                out[f"{t}{att['q']}.{p}"], out[f"{t}{att['k']}.{p}"], out[f"{t}{att['v']}.{p}"] = q, k, v
            for a, b in (
                ("attn.proj", att["o"]),
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                if f"{s}{a}.{p}" in src:
                    out[f"{t}{b}.{p}"] = take(f"{s}{a}.{p}")
        for a, b in (("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1")):
            if f"{s}{a}" in src:
                out[f"{t}{b}"] = take(f"{s}{a}")
    unused = sorted(set(src) - used)
    unfilled = sorted(set(target_keys) - set(out))
    extra = sorted(set(out) - set(target_keys))
    if unused or unfilled or extra:
        parts = [f"{n} ({len(v)}): {v[:8]}" for n, v in (("unused", unused), ("unfilled", unfilled), ("extra", extra))]
        raise Dinov2ConversionError("DINOv2 key conversion failed: " + "; ".join(p for p in parts if "(0)" not in p))
    return {k: v.contiguous() for k, v in out.items()}


def load_hub_dinov2(path: str | Path, device: str | torch.device = "cpu"):
    """A transformers Dinov2Model holding the weights of an official torch.hub checkpoint."""
    from transformers import Dinov2Model

    src = load_hub_state_dict(path)
    config = hub_config(src)
    with torch.device("meta"):
        target = Dinov2Model(config).state_dict()
    converted = convert_state_dict(src, target.keys())
    bad = [
        f"{k}: {tuple(v.shape)}, expected {tuple(target[k].shape)}"
        for k, v in converted.items()
        if v.shape != target[k].shape
    ]
    if bad:
        raise Dinov2ConversionError(f"{path}: shapes do not fit Dinov2Model: {bad[:8]}")
    with torch.device("meta"):
        model = Dinov2Model(config)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.to(device).eval()
