"""Validation videos during training (train.validation_every, train.validation.*).

Every `train.validation_every` optimizer steps the model being trained (its EMA weights when
train.ema is on) generates one video per fixed first frame with diffusers'
`StableVideoDiffusionPipeline`, built from the run's own frozen parts (VAE, CLIP) and a fresh Euler
scheduler. The first frames are those of the first `num_videos` clips of `validation.split`, the same
for the whole run; video k is seeded with `validation.seed + k`, so videos of different steps differ
only by the weights. Videos are written as `<run>/validation/step-<N>/<k>.mp4` and sent to the tracker.

Generation draws its noise from its own generators and runs without gradients: the training
randomness (trainers/loop.step_generator) and so the trained weights are the same with validation on
or off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def first_frames(data_cfg, split: str, n: int) -> list[np.ndarray]:
    """uint8 [H,W,3] first frames of the first `n` clips of `split` (fewer if the split is smaller)."""
    from data.registry import build_dataset

    clips = build_dataset(data_cfg, split)
    return [np.asarray(clips[k].frames[0]) for k in range(min(n, len(clips)))]


class Validator:
    def __init__(self, cfg, parts, run_dir: Path):
        self.cfg, self.parts = cfg, parts
        v = cfg.train.validation
        self.v = v
        self.out = Path(run_dir) / "validation"
        self.frames0 = first_frames(cfg.data, v.split, int(v.num_videos))

    def due(self, step: int) -> bool:
        every = int(self.cfg.train.get("validation_every", 0) or 0)
        return every > 0 and step % every == 0

    @torch.no_grad()
    def __call__(self, unet, step: int, autocast) -> list[tuple[str, np.ndarray, Path]]:
        """Generate with `unet` (eval mode inside, its training mode restored); returns
        (name, uint8 frames [T,H,W,3], mp4 path) per video."""
        from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
        from PIL import Image

        from data.video_io import write_video

        p, cfg, v = self.parts, self.cfg, self.v
        pipe = StableVideoDiffusionPipeline(
            vae=p.vae,
            image_encoder=p.image_encoder,
            unet=unet,
            scheduler=EulerDiscreteScheduler.from_config(p.scheduler.config),
            feature_extractor=p.feature_extractor,
        )
        pipe.set_progress_bar_config(disable=True)
        was_training = unet.training
        unet.eval()
        videos = []
        try:
            for k, frame0 in enumerate(self.frames0):
                g = torch.Generator(device="cpu").manual_seed(int(v.seed) + k)
                with autocast():
                    out = pipe(
                        Image.fromarray(frame0),
                        height=int(cfg.data.height),
                        width=int(cfg.data.width),
                        num_frames=int(cfg.data.clip_len),
                        num_inference_steps=int(v.num_inference_steps),
                        fps=int(cfg.cond.fps),
                        motion_bucket_id=int(cfg.cond.motion_bucket_id),
                        noise_aug_strength=float(cfg.cond.noise_aug),
                        min_guidance_scale=float(v.min_guidance_scale),
                        max_guidance_scale=float(v.max_guidance_scale),
                        decode_chunk_size=int(v.decode_chunk_size),
                        generator=g,
                        output_type="np",
                    )
                frames = (np.clip(np.asarray(out.frames[0], dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
                name = f"{k:02d}"
                path = write_video(self.out / f"step-{step:08d}" / f"{name}.mp4", frames, fps=float(cfg.cond.fps))
                videos.append((name, frames, path))
        finally:
            unet.train(was_training)
        return videos
