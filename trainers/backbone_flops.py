"""Forward FLOPs of the denoiser and of the LSA decode, SVD vs LTX-Video, at true size (docs/backbones.md).

    python -m trainers.backbone_flops [--frames 25 --height 320 --width 512]

Counted with torch.utils.flop_counter on fake tensors (torch's FakeTensorMode): shapes only, no
weights, no memory, seconds on a CPU. Matrix products and convolutions are counted, elementwise work
is not. A backward pass costs about twice its forward. These are operation counts, not times.
"""

from __future__ import annotations

import argparse

import torch


def _tflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def count(frames: int = 25, height: int = 320, width: int = 512) -> dict:
    from diffusers import (
        AutoencoderKLLTXVideo,
        AutoencoderKLTemporalDecoder,
        LTXVideoTransformer3DModel,
        UNetSpatioTemporalConditionModel,
    )
    from torch._subclasses.fake_tensor import FakeTensorMode

    from trainers.backbones.ltx import LTX_091_VAE_CONFIG, T5_XXL_DIM

    out = {}
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        unet = UNetSpatioTemporalConditionModel(num_frames=frames)
        svd_vae = AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=768,
        )
        h, w = height // 8, width // 8
        out["svd_unet"] = _tflop(
            lambda: (
                unet(
                    torch.randn(1, frames, 8, h, w),
                    torch.tensor([0.5]),
                    encoder_hidden_states=torch.randn(1, 1, 1024),
                    added_time_ids=torch.randn(1, 3),
                ).sample
            )
        )
        out["svd_decode"] = _tflop(lambda: svd_vae.decode(torch.randn(frames, 4, h, w), num_frames=frames).sample)
        tr = LTXVideoTransformer3DModel()
        vae = AutoencoderKLLTXVideo(**LTX_091_VAE_CONFIG)
        F, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
        S = F * h * w
        out["ltx_transformer"] = _tflop(
            lambda: (
                tr(
                    hidden_states=torch.randn(1, S, 128),
                    encoder_hidden_states=torch.randn(1, 128, T5_XXL_DIM),
                    timestep=torch.rand(1, S) * 1000,
                    encoder_attention_mask=torch.ones(1, 128),
                    num_frames=F,
                    height=h,
                    width=w,
                    rope_interpolation_scale=(8 / 25, 32, 32),
                ).sample
            )
        )
        out["ltx_decode"] = _tflop(lambda: vae.decode(torch.randn(1, 128, F, h, w), torch.tensor([0.05])).sample)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=512)
    a = ap.parse_args(argv)
    if (a.frames - 1) % 8 or a.height % 32 or a.width % 32:
        ap.error("LTX-Video needs 1 + 8k frames and sizes that are multiples of 32")
    c = count(a.frames, a.height, a.width)
    print(f"forward TFLOP at {a.frames} x {a.height} x {a.width}, batch 1")
    print(
        f"  SVD  U-Net {c['svd_unet']:.2f}   decode {c['svd_decode']:.2f}   decode / U-Net "
        f"{c['svd_decode'] / c['svd_unet']:.2f}"
    )
    print(
        f"  LTX  transformer {c['ltx_transformer']:.2f}   decode {c['ltx_decode']:.2f}   decode / transformer "
        f"{c['ltx_decode'] / c['ltx_transformer']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
