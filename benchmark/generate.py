"""Generating the test videos with diffusers' StableVideoDiffusionPipeline (the paper's inference).

Each test clip's first frame conditions one video; clip k uses the seed `seed + k`, so every method
and every rerun sees the same noise. Videos are written as frame folders (lossless, what the metrics
read) and optionally as mp4 for viewing; a clip whose folder exists is not generated again, so an
interrupted stage resumes where it stopped.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from data.video_io import write_frames, write_video
from trainers.timing import generation_timing


def load_pipeline(model_cfg, unet_dir: str | Path | None = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32):
    """The SVD pipeline of `model.svd`, with a fine-tuned U-Net folder swapped in when given."""
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    from trainers.models import resolve_svd_source
    if model_cfg.svd == "full-random":
        raise ValueError("model=full-random has random weights: it is for performance measurements, "
                         "not for generating benchmark videos")
    source = resolve_svd_source(model_cfg)
    kw = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    if unet_dir is not None:
        kw["unet"] = UNetSpatioTemporalConditionModel.from_pretrained(unet_dir, **kw)
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            source, revision=model_cfg.get("revision"), variant=model_cfg.get("variant"), **kw)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not load the SVD pipeline from model.svd={source!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_videos(pipe, first_frames: Sequence[np.ndarray], names: Sequence[str], gen_cfg,
                    out_dir: str | Path) -> dict:
    """first_frames: uint8 [H,W,3] per clip. Writes out_dir/frames/<name>/ (+ out_dir/videos/<name>.mp4).

    The k-th clip given is seeded with gen_cfg.seed + k: a shard of the test set (benchmark/shards.py)
    passes its block of clips with the seed moved by the block's start, so each clip keeps its seed.

    Returns timing: seconds spent generating (resumed clips excluded) and the number generated now.
    """
    out_dir = Path(out_dir)
    device = pipe.device
    times: list[float] = []   # per generated video
    for k, (frame0, name) in enumerate(tqdm(list(zip(first_frames, names)), desc="generate", unit="video")):
        folder = out_dir / "frames" / name
        if folder.is_dir():
            continue
        g = torch.Generator(device="cpu").manual_seed(int(gen_cfg.seed) + k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        video = pipe(Image.fromarray(frame0), height=int(gen_cfg.height), width=int(gen_cfg.width),
                     num_frames=int(gen_cfg.num_frames), num_inference_steps=int(gen_cfg.num_inference_steps),
                     fps=int(gen_cfg.fps), motion_bucket_id=int(gen_cfg.motion_bucket_id),
                     noise_aug_strength=float(gen_cfg.noise_aug_strength),
                     min_guidance_scale=float(gen_cfg.min_guidance_scale),
                     max_guidance_scale=float(gen_cfg.max_guidance_scale),
                     decode_chunk_size=int(gen_cfg.decode_chunk_size), generator=g, output_type="np").frames[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        frames = (np.clip(np.asarray(video), 0, 1) * 255).round().astype(np.uint8)
        if gen_cfg.get("save_mp4", True):
            write_video(out_dir / "videos" / f"{name}.mp4", frames, fps=float(gen_cfg.fps))
        write_frames(folder, frames)        # last: a clip counts as done only once its frames exist
    return generation_timing(times, len(names))

