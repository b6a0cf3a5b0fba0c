"""Loading the SVD parts and DINOv2: from a hub id, a local folder, or `tiny`.

`tiny` builds randomly initialised models of the real classes (channel counts multiples of 32,
as GroupNorm(32) requires), saves them once under `cache_dir` and then loads them with the same
`from_pretrained` calls as real weights, so the smoke profile exercises the real loading code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data.atomic import publish_dir_once
from data.device import resolve_device

# Scheduler settings of the public SVD img2vid release (scheduler/scheduler_config.json).
SVD_SCHEDULER_CONFIG = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    sigma_max=700.0,
    sigma_min=0.002,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_type="continuous",
    trained_betas=None,
    use_karras_sigmas=True,
)


@dataclass
class SVDParts:
    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    feature_extractor: object
    scheduler: object
    source: str

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)


def build_tiny_svd(seed: int = 0, num_frames: int = 8):
    """Randomly initialised SVD pipeline parts of the real classes, small enough for a CPU."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=(2, 4),
        num_frames=num_frames,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
            projection_dim=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})
    scheduler = EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)
    return dict(
        unet=unet, vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor, scheduler=scheduler
    )


def build_full_random_svd(seed: int = 0, num_frames: int = 25, device: str | None = "cpu"):
    """SVD img2vid at full size with random weights (published configs): true time and memory, no weights."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPImageProcessor

    torch.manual_seed(seed)
    # model.build_device=auto: the GPU when there is one (the 2.3 B parameters of SVD + CLIP + DINOv2
    # are initialised in seconds there, in about a minute on a CPU)
    with torch.device(resolve_device(device)):
        unet, vae, image_encoder = _full_random_svd_modules(num_frames)
    return dict(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
        scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG),
    )


def _full_random_svd_modules(num_frames: int):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNetSpatioTemporalConditionModel(num_frames=num_frames)  # the class defaults are SVD's config
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(  # OpenCLIP ViT-H/14
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1024,
            hidden_act="gelu",
        )
    )
    return unet, vae, image_encoder


def build_full_random_dino(seed: int = 0, device: str | None = "cpu"):
    """DINOv2 ViT-B/14 (facebook/dinov2-base config) with random weights."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    with torch.device(resolve_device(device)):
        return Dinov2Model(
            Dinov2Config(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                patch_size=14,
                image_size=518,
            )
        )


def build_tiny_dino(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            patch_size=14,
            image_size=98,
        )
    )


def save_tiny_svd(folder: str | Path, seed: int = 0, num_frames: int = 8) -> Path:
    """A complete diffusers SVD folder (model_index.json + parts) with tiny random weights."""
    from diffusers import StableVideoDiffusionPipeline

    def save(tmp):
        StableVideoDiffusionPipeline(**build_tiny_svd(seed, num_frames)).save_pretrained(tmp)

    return publish_dir_once(Path(folder), save)


def save_tiny_dino(folder: str | Path, seed: int = 0) -> Path:
    return publish_dir_once(Path(folder), lambda tmp: build_tiny_dino(seed).save_pretrained(tmp))


def resolve_svd_source(model_cfg) -> str:
    if model_cfg.svd == "tiny":
        folder = Path(model_cfg.cache_dir) / f"tiny-svd-s{model_cfg.tiny_seed}-f{model_cfg.tiny_frames}"
        return str(save_tiny_svd(folder, model_cfg.tiny_seed, model_cfg.tiny_frames))
    return str(model_cfg.svd)


def resolve_dino_source(model_cfg) -> str:
    if model_cfg.dino == "tiny":
        return str(
            save_tiny_dino(Path(model_cfg.cache_dir) / f"tiny-dinov2-s{model_cfg.tiny_seed}", model_cfg.tiny_seed)
        )
    return str(model_cfg.dino)


def load_svd(model_cfg, unet_path: str | None = None) -> SVDParts:
    """SVD parts from a hub id or local diffusers folder (`model.svd`), `tiny` included.

    `unet_path` swaps in a fine-tuned U-Net (a diffusers folder written by `trainers.export`).
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    if model_cfg.svd == "full-random":
        parts = build_full_random_svd(
            model_cfg.get("tiny_seed", 0), model_cfg.get("num_frames", 25), model_cfg.get("build_device", "cpu")
        )
        return SVDParts(**parts, source="full-random")
    source = resolve_svd_source(model_cfg)
    kw = dict(revision=model_cfg.get("revision"), variant=model_cfg.get("variant"))
    try:
        unet = (
            UNetSpatioTemporalConditionModel.from_pretrained(unet_path)
            if unet_path
            else UNetSpatioTemporalConditionModel.from_pretrained(source, subfolder="unet", **kw)
        )
        vae = AutoencoderKLTemporalDecoder.from_pretrained(source, subfolder="vae", **kw)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder", **kw)
        feature_extractor = CLIPImageProcessor.from_pretrained(
            source, subfolder="feature_extractor", revision=kw["revision"]
        )
        scheduler = EulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=kw["revision"])
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"could not load SVD from model.svd={source!r}{' with unet ' + unet_path if unet_path else ''}: {e}\n"
            "Give a local diffusers folder (e.g. a snapshot of stabilityai/stable-video-diffusion-img2vid) "
            "or a hub id reachable from this machine, or model=tiny for the smoke profile."
        ) from e
    return SVDParts(unet, vae, image_encoder, feature_extractor, scheduler, source)


def load_dino(model_cfg):
    from transformers import AutoModel

    if model_cfg.dino == "full-random":
        return build_full_random_dino(model_cfg.get("tiny_seed", 0), model_cfg.get("build_device", "cpu"))
    source = resolve_dino_source(model_cfg)
    from trainers.dinov2_hub import is_hub_checkpoint, load_hub_dinov2

    if is_hub_checkpoint(source):  # the official torch.hub file, e.g. dinov2_vitb14_pretrain.pth
        return load_hub_dinov2(source)
    try:
        return AutoModel.from_pretrained(source, revision=model_cfg.get("revision"))
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"could not load DINOv2 from model.dino={source!r}: {e}\n"
            "Give a local folder (e.g. a snapshot of facebook/dinov2-base), the official torch.hub file "
            "dinov2_vitb14_pretrain.pth, or a hub id."
        ) from e


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
