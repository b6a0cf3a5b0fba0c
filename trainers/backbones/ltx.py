"""LTX-Video image-to-video (diffusers' LTXImageToVideoPipeline) as an LSA backbone (docs/backbones.md).

Parts: LTXVideoTransformer3DModel (trainable), AutoencoderKLLTXVideo (frozen; 32 x 32 spatial and 8x
temporal compression, 128 channels), T5 encoder + tokenizer (frozen; the prompt is encoded once),
FlowMatchEulerDiscreteScheduler. `tiny` builds randomly initialised models of the real classes
(spatial 8x, temporal 2x) and saves them as a complete pipeline folder, loaded with from_pretrained
like real weights; `full-random` builds the 2 B transformer and the 0.9.1 VAE at true size with random
weights (performance only).

Training follows the pipeline's image conditioning: the first latent frame is the clean latent of
frame 0 with timestep 0 and takes no loss; every other latent frame is noised to sigma
(trainers/flow.py), the transformer predicts the velocity, L_diff is its mean squared error, and
z0_hat = x_t - sigma v_hat (the first latent frame kept clean).

Frames and boxes: the VAE keeps the first frame on its own and packs each following run of r
frames (r = temporal compression, 8 for LTX-Video) into one latent frame, so T = 1 + r (F - 1) video
frames give F latent frames, and decoding F latent frames gives back T frames. Decoded frame j is
video frame j; the LSA mask of decoded frame j is built from the boxes of video frame j. Clips whose
length is not 1 + r k are refused (naming data.clip_len), never trimmed silently.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from data.atomic import TEMP_PREFIX, publish_dir_once
from data.device import resolve_device
from trainers import flow
from trainers.backbones.base import DiffusionTerms
from trainers.decoder_speed import chunk_checkpoint
from trainers.models import count_params
from trainers.objective import select_frames

# Scheduler of the LTX-Video release (its diffusers conversion, scripts/convert_ltx_to_diffusers.py).
LTX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
)

# The 0.9.1 VAE (timestep-conditioned decoder) as that conversion script builds it.
LTX_091_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=128,
    block_out_channels=(128, 256, 512, 512),
    decoder_block_out_channels=(256, 512, 1024),
    layers_per_block=(4, 3, 3, 3, 4),
    decoder_layers_per_block=(5, 6, 7, 8),
    spatio_temporal_scaling=(True, True, True, False),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, True, True, True),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    timestep_conditioning=True,
    patch_size=4,
    patch_size_t=1,
    resnet_norm_eps=1e-6,
    scaling_factor=1.0,
    encoder_causal=True,
    decoder_causal=False,
)
T5_XXL_DIM = 4096  # caption_channels of the released transformer (google/t5-v1_1-xxl)
TINY_WORDS = [
    "a",
    "video",
    "of",
    "street",
    "seen",
    "from",
    "the",
    "front",
    "camera",
    "car",
    "driving",
    "traffic",
    "road",
]


@dataclass
class LTXParts:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module | None
    tokenizer: object | None
    scheduler: object
    source: str


# ------------------------------------------------------------------------------------------ building
def tiny_tokenizer():
    """A T5 tokenizer (Unigram) over a few words, built offline; unknown words map to <unk>."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in TINY_WORDS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=128)


def build_tiny_ltx(seed: int = 0) -> dict:
    """Randomly initialised LTX image-to-video parts of the real classes, small enough for a CPU."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    )
    # one spatio-temporal downsampling: 8x spatial (patch 4 x 2), 2x temporal; timestep-conditioned
    # decoder as the 0.9.1 release
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(32, 32),
        down_block_types=("LTXVideoDownBlock3D",) * 2,
        decoder_block_out_channels=(32, 32),
        layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        spatio_temporal_scaling=(True, False),
        decoder_spatio_temporal_scaling=(True, False),
        decoder_inject_noise=(False, False, False),
        downsample_type=("conv", "conv"),
        upsample_residual=(False, False),
        upsample_factor=(1, 1),
        timestep_conditioning=True,
        patch_size=4,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=32,
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(LTX_SCHEDULER_CONFIG)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def build_full_random_ltx(seed: int = 0, device: str | None = "cpu") -> dict:
    """LTX-Video 2 B (transformer class defaults = the release) and the 0.9.1 VAE, random weights.
    No T5-XXL: the prompt is encoded once before training, so random prompt embeddings of its width
    stand in (model.prompt_tokens of them)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    with torch.device(resolve_device(device)):
        transformer = LTXVideoTransformer3DModel()
        vae = AutoencoderKLLTXVideo(**LTX_091_VAE_CONFIG)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(LTX_SCHEDULER_CONFIG),
    )


def save_tiny_ltx(folder: str | Path, seed: int = 0) -> Path:
    """A complete diffusers LTXImageToVideoPipeline folder with tiny random weights."""
    from diffusers import LTXImageToVideoPipeline

    def save(tmp):
        LTXImageToVideoPipeline(**build_tiny_ltx(seed)).save_pretrained(tmp)

    return publish_dir_once(Path(folder), save)


def resolve_ltx_source(model_cfg) -> str:
    if model_cfg.ltx == "tiny":
        return str(save_tiny_ltx(Path(model_cfg.cache_dir) / f"tiny-ltx-s{model_cfg.tiny_seed}", model_cfg.tiny_seed))
    return str(model_cfg.ltx)


def load_ltx(model_cfg, transformer_path: str | None = None) -> LTXParts:
    """LTX parts from a hub id or local diffusers folder (`model.ltx`), `tiny` and `full-random` included.
    `transformer_path` swaps in a fine-tuned transformer (a folder the trainer exported)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5EncoderModel, T5TokenizerFast

    if model_cfg.ltx == "full-random":
        parts = build_full_random_ltx(model_cfg.get("tiny_seed", 0), model_cfg.get("build_device", "cpu"))
        return LTXParts(**parts, source="full-random")
    source = resolve_ltx_source(model_cfg)
    kw = dict(revision=model_cfg.get("revision"), variant=model_cfg.get("variant"))
    try:
        transformer = (
            LTXVideoTransformer3DModel.from_pretrained(transformer_path)
            if transformer_path
            else LTXVideoTransformer3DModel.from_pretrained(source, subfolder="transformer", **kw)
        )
        vae = AutoencoderKLLTXVideo.from_pretrained(source, subfolder="vae", **kw)
        text_encoder = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", **kw)
        tokenizer = T5TokenizerFast.from_pretrained(source, subfolder="tokenizer", revision=kw["revision"])
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
            source, subfolder="scheduler", revision=kw["revision"]
        )
    except (OSError, ValueError) as e:
        raise RuntimeError(
            f"could not load LTX-Video from model.ltx={source!r}"
            f"{' with transformer ' + transformer_path if transformer_path else ''}: {e}\n"
            "Give a local diffusers folder (e.g. a snapshot of Lightricks/LTX-Video) or a hub id reachable "
            "from this machine, or model=ltx-tiny for the smoke profile."
        ) from e
    return LTXParts(transformer, vae, text_encoder, tokenizer, scheduler, source)


# ------------------------------------------------------------------------------------------ the backbone
class LTXBackbone:
    name = "ltx"
    export_name = "transformer"

    def __init__(self, model_cfg, parts: LTXParts | None = None, transformer_path: str | None = None):
        self.cfg = model_cfg
        self.parts = parts if parts is not None else load_ltx(model_cfg, transformer_path)
        vae, tr = self.parts.vae, self.parts.transformer
        self.r_t = int(vae.temporal_compression_ratio)
        self.r_s = int(vae.spatial_compression_ratio)
        self.p, self.p_t = int(tr.config.patch_size), int(tr.config.patch_size_t)
        self.num_train_timesteps = int(self.parts.scheduler.config.num_train_timesteps)
        fc = model_cfg.flow
        self._sampler_args = (fc.sigma_dist, float(fc.logit_mean), float(fc.logit_std))
        self.shift = fc.shift
        self.prompt_embeds, self.prompt_mask = self._encode_prompt()

    # ---------------------------------------------------------------- networks
    def trainable(self) -> torch.nn.Module:
        return self.parts.transformer

    def frozen(self):
        return [m for m in (self.parts.vae, self.parts.text_encoder) if m is not None]

    @torch.no_grad()
    def _encode_prompt(self):
        """The fixed training prompt (model.prompt) as T5 embeddings [1, L, D] and mask [1, L], once."""
        L = int(self.cfg.max_sequence_length)
        if self.parts.text_encoder is None:  # full-random: embeddings of the T5-XXL width
            g = torch.Generator().manual_seed(int(self.cfg.get("tiny_seed", 0)))
            n = int(self.cfg.get("prompt_tokens", 16))
            mask = torch.zeros(1, L, dtype=torch.bool)
            mask[:, :n] = True
            return torch.randn(1, L, T5_XXL_DIM, generator=g) * mask[..., None], mask
        tok = self.parts.tokenizer(
            self.cfg.prompt,
            padding="max_length",
            max_length=L,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        enc = self.parts.text_encoder
        dev = next(enc.parameters()).device
        embeds = enc(tok.input_ids.to(dev), attention_mask=tok.attention_mask.to(dev))[0]
        return embeds.float().cpu(), tok.attention_mask.bool()

    # ---------------------------------------------------------------- frames and latents
    def check_frames(self, num_frames: int, height: int | None = None, width: int | None = None) -> None:
        if (num_frames - 1) % self.r_t:
            k = max(1, round((num_frames - 1) / self.r_t))
            raise ValueError(
                f"data.clip_len={num_frames}: this LTX VAE packs frame 0 alone and then {self.r_t} "
                f"frames per latent frame, so clips need 1 + {self.r_t} k frames "
                f"(e.g. data.clip_len={1 + self.r_t * k})"
            )
        for key, v in (("data.height", height), ("data.width", width)):
            if v is not None and v % (self.r_s * self.p):
                raise ValueError(
                    f"{key}={v}: must be a multiple of {self.r_s * self.p} (the VAE's spatial "
                    f"compression x the transformer's patch)"
                )

    def num_latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.r_t + 1

    def frames_of_latent(self, k: int) -> list[int]:
        """Latent frame 0 is video frame 0; latent frame k >= 1 is video frames r(k-1)+1 .. rk."""
        if k < 0:
            raise ValueError(f"latent frame {k} < 0")
        return [0] if k == 0 else list(range(self.r_t * (k - 1) + 1, self.r_t * k + 1))

    def _latent_stats(self, like: torch.Tensor):
        vae = self.parts.vae
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(like.device, torch.float32)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(like.device, torch.float32)
        return mean, std, float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B,T,3,H,W] in [-1,1] -> normalised latents [B,C,F,h,w] (the pipeline's _normalize_latents)."""
        _, T, _, H, W = frames.shape
        self.check_frames(T, H, W)
        vae = self.parts.vae
        dist = vae.encode(frames.permute(0, 2, 1, 3, 4).to(vae.dtype)).latent_dist
        z = dist.sample(generator=generator) if self.cfg.latent == "sample" else dist.mode()
        mean, std, scale = self._latent_stats(z)
        return (z.float() - mean) * scale / std

    def condition(self, frames: torch.Tensor, z0: torch.Tensor, generator: torch.Generator, train: bool = True):
        """The fixed prompt's embeddings for the batch; the image conditioning is z0's first latent frame."""
        B = frames.shape[0]
        return dict(
            prompt_embeds=self.prompt_embeds.repeat(B, 1, 1).to(frames.device),
            prompt_mask=self.prompt_mask.repeat(B, 1).to(frames.device),
        )

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        from diffusers import LTXImageToVideoPipeline

        return LTXImageToVideoPipeline._pack_latents(z, self.p, self.p_t)

    def unpack(self, tokens: torch.Tensor, F: int, h: int, w: int) -> torch.Tensor:
        from diffusers import LTXImageToVideoPipeline

        return LTXImageToVideoPipeline._unpack_latents(
            tokens, F // self.p_t, h // self.p, w // self.p, self.p, self.p_t
        )

    def sigma_sampler(self, seq_len: int) -> flow.FlowSigmaSampler:
        mu = None
        if self.shift == "auto":
            mu = flow.dynamic_shift(seq_len, self.parts.scheduler.config)
        elif self.shift is not None:
            mu = float(self.shift)
        return flow.FlowSigmaSampler(*self._sampler_args, mu=mu)

    def rope_scale(self):
        """The pipeline's rope_interpolation_scale: latent frame spacing in seconds, spatial compression."""
        return (self.r_t / float(self.cfg.frame_rate), self.r_s, self.r_s)

    # ---------------------------------------------------------------- one diffusion step
    def diffusion_loss(self, model, z0: torch.Tensor, cond, generator: torch.Generator) -> DiffusionTerms:
        B, _, F, h, w = z0.shape
        if F < 2:
            raise ValueError("data.clip_len: the clip has one latent frame (the conditioning frame): nothing to train")
        sigma = self.sigma_sampler(F * h * w // (self.p_t * self.p * self.p))(B, generator).to(z0.device)
        eps = torch.randn(z0.shape, generator=generator).to(z0)
        x_t = torch.cat([z0[:, :, :1], flow.noisy(z0[:, :, 1:], eps[:, :, 1:], sigma)], dim=2)
        t_frames = torch.ones(B, 1, F, h, w, device=z0.device)
        t_frames[:, :, 0] = 0.0  # the conditioning frame is clean: timestep 0
        t_tok = self.pack(t_frames * flow.timestep(sigma, self.num_train_timesteps).view(B, 1, 1, 1, 1)).squeeze(-1)
        dtype = next(model.parameters()).dtype
        out = model(
            hidden_states=self.pack(x_t).to(dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(dtype),
            timestep=t_tok.to(dtype),
            encoder_attention_mask=cond["prompt_mask"],
            num_frames=F // self.p_t,
            height=h // self.p,
            width=w // self.p,
            rope_interpolation_scale=self.rope_scale(),
            return_dict=False,
        )[0]
        v_hat = self.unpack(out.float(), F, h, w)[:, :, 1:]
        v = flow.target(z0[:, :, 1:], eps[:, :, 1:])
        loss = ((v_hat - v.float()) ** 2).mean()
        z0_hat = torch.cat([z0[:, :, :1].float(), flow.denoise(v_hat, x_t[:, :, 1:].float(), sigma.float())], dim=2)
        return DiffusionTerms(loss, z0_hat, sigma)

    def decode(self, z0_hat: torch.Tensor, loss_cfg, frames: list[int] | None = None) -> torch.Tensor:
        """z0_hat [B,C,F,h,w] -> x_hat [B,T',3,H,W] with the graph kept. The decoder mixes latent frames
        (3-D convolutions, not causal), so all F are decoded together; `frames` then picks video frames
        (loss.decode_frames saves DINOv2 work here, not decoder work). One video per decoder call; with
        loss.decode_checkpoint each call is recomputed in the backward pass."""
        vae = self.parts.vae
        mean, std, scale = self._latent_stats(z0_hat)
        z = z0_hat * std / scale + mean
        temb = None
        if vae.config.timestep_conditioning:
            temb = torch.full((1,), float(self.cfg.decode_timestep), device=z.device, dtype=vae.dtype)

        def run(zb):
            return vae.decode(zb.to(vae.dtype), temb, return_dict=False)[0]

        use_ckpt = chunk_checkpoint(loss_cfg)
        outs = [
            checkpoint(run, z[b : b + 1], use_reentrant=False) if use_ckpt else run(z[b : b + 1])
            for b in range(z.shape[0])
        ]
        x = torch.cat(outs).float().permute(0, 2, 1, 3, 4)  # [B,T,3,H,W]
        return x if frames is None else x[:, frames]

    def select_frames(self, num_frames: int, decode_frames) -> list[int]:
        return select_frames(num_frames, decode_frames)

    # ---------------------------------------------------------------- export and generation
    def export(self, model: torch.nn.Module, folder: Path) -> int:
        from trainers.adapters import merged_unet

        net = merged_unet(copy.deepcopy(model).float())
        folder = Path(folder)
        tmp = folder.parent / f"{TEMP_PREFIX}{folder.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        net.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return count_params(net)

    def pipeline(self, trained: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
        return ltx_pipeline(self.cfg, trained, device, dtype)

    def generate(self, pipe, frame0: np.ndarray, gen_cfg, generator: torch.Generator) -> np.ndarray:
        return ltx_generate(self.cfg, pipe, frame0, gen_cfg, generator)


# ------------------------------------------------------------------------------------------ generation
def ltx_pipeline(model_cfg, trained: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """LTXImageToVideoPipeline of model.ltx, with an exported transformer folder swapped in when given."""
    from diffusers import LTXImageToVideoPipeline, LTXVideoTransformer3DModel

    if model_cfg.ltx == "full-random":
        raise ValueError(
            "model.ltx=full-random has random weights: it is for performance measurements, "
            "not for generating benchmark videos"
        )
    source = resolve_ltx_source(model_cfg)
    kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    if trained is not None:
        kw["transformer"] = LTXVideoTransformer3DModel.from_pretrained(trained, **kw)
    try:
        pipe = LTXImageToVideoPipeline.from_pretrained(
            source, revision=model_cfg.get("revision"), variant=model_cfg.get("variant"), **kw
        )
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not load the LTX-Video pipeline from model.ltx={source!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def ltx_generate(model_cfg, pipe, frame0: np.ndarray, gen_cfg, generator: torch.Generator) -> np.ndarray:
    """One video from a uint8 [H,W,3] first frame -> uint8 [T,H,W,3]: the training prompt, the clips'
    frame rate, classifier-free guidance model.guidance_scale against model.negative_prompt; size,
    frames and steps from gen_cfg (benchmark.generate)."""
    from PIL import Image

    video = pipe(
        image=Image.fromarray(frame0),
        prompt=model_cfg.prompt,
        negative_prompt=model_cfg.get("negative_prompt") or "",
        height=int(gen_cfg.height),
        width=int(gen_cfg.width),
        num_frames=int(gen_cfg.num_frames),
        frame_rate=int(model_cfg.frame_rate),
        num_inference_steps=int(gen_cfg.num_inference_steps),
        guidance_scale=float(model_cfg.guidance_scale),
        decode_timestep=float(model_cfg.decode_timestep),
        decode_noise_scale=model_cfg.get("decode_noise_scale"),
        generator=generator,
        max_sequence_length=int(model_cfg.max_sequence_length),
        output_type="np",
    ).frames[0]
    return (np.clip(np.asarray(video), 0, 1) * 255).round().astype(np.uint8)
