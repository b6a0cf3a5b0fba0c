"""Video diffusion backbones behind one interface (trainers/backbones/base.py): `svd` (the paper's
Stable Video Diffusion) and `ltx` (LTX-Video image-to-video, a flow-matching video DiT).
`model.backbone` picks one; configs without the key are SVD."""

from __future__ import annotations

BACKBONES = ("svd", "ltx")


def backbone_name(model_cfg) -> str:
    name = model_cfg.get("backbone", "svd") if hasattr(model_cfg, "get") else "svd"
    if name not in BACKBONES:
        raise ValueError(f"model.backbone={name!r}: valid are {', '.join(BACKBONES)}")
    return name


def generation(model_cfg):
    """(load_pipeline(model_cfg, trained_folder, device, dtype), video(model_cfg, pipe, frame0, gen_cfg,
    generator) -> uint8 [T,H,W,3]) of a non-SVD backbone, without loading its training parts."""
    name = backbone_name(model_cfg)
    if name == "ltx":
        from trainers.backbones.ltx import ltx_generate, ltx_pipeline

        return ltx_pipeline, ltx_generate
    raise ValueError(f"model.backbone={name}: generation goes through benchmark/generate.py's SVD pipeline")


def load_backbone(cfg, trained: str | None = None):
    """The backbone of `cfg.model` with its networks loaded (`trained`: an exported network folder)."""
    name = backbone_name(cfg.model)
    if name == "ltx":
        from trainers.backbones.ltx import LTXBackbone

        return LTXBackbone(cfg.model, transformer_path=trained)
    from trainers.backbones.svd import SVDBackbone

    return SVDBackbone(cfg, unet_path=trained)
