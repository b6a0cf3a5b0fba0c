"""Performance harness: the LSA step vs the diffusion-only step, full U-Net and LoRA, and generation.

    python -m benchmark.perf [--steps 5] [--adapters unet,lora] [--gen-videos 0] [--out-dir results/perf] [key=value ...]

`key=value` are trainer overrides (configs/train.yaml). On the CPU the default is the tiny model;
at paper scale on a GPU:
    python -m benchmark.perf model=full-random data.height=320 data.width=512 data.clip_len=25 \
        train.mixed_precision=bf16 train.grad_checkpointing=true loss.decode_checkpoint=true

`model=full-random` builds SVD (U-Net, temporal VAE, CLIP ViT-H/14) and DINOv2 ViT-B/14 at full
size with random weights: exactly the time and memory of the trained models. Writes
results/perf/<device>.json and .md naming the device, the versions and every switch used; any
approximation (loss.decode_frames) is part of the recorded setting.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import torch

from data.atomic import atomic_write_json, atomic_write_text
from trainers.bench_step import bench


def device_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "device"


def time_generation(overrides: list[str], n_videos: int) -> dict:
    """Generate n_videos with the SVD pipeline at the configured size (tiny/svd models only)."""
    import numpy as np
    from omegaconf import OmegaConf

    from benchmark.generate import generate_videos, load_pipeline
    from trainers.config import load_config
    import tempfile
    cfg = load_config(["model=tiny", *overrides])
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    if cfg.model.svd == "full-random":
        # random weights generate noise, but in exactly the time the trained SVD takes
        from diffusers import StableVideoDiffusionPipeline
        from trainers.models import build_full_random_svd
        pipe = StableVideoDiffusionPipeline(**build_full_random_svd(num_frames=cfg.data.clip_len)).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = load_pipeline(cfg.model, device=device, dtype=dtype)
    gen = OmegaConf.create(dict(height=cfg.data.height, width=cfg.data.width, num_frames=cfg.data.clip_len,
                                num_inference_steps=int(os.environ.get("LSA_PERF_GEN_STEPS", 50)), fps=cfg.cond.fps,
                                motion_bucket_id=cfg.cond.motion_bucket_id, noise_aug_strength=cfg.cond.noise_aug,
                                min_guidance_scale=1.0, max_guidance_scale=3.0, decode_chunk_size=8, seed=0,
                                save_mp4=False))
    firsts = [np.full((cfg.data.height, cfg.data.width, 3), 100 + k, np.uint8) for k in range(n_videos)]
    with tempfile.TemporaryDirectory() as tmp:
        t = generate_videos(pipe, firsts, [f"v{k}" for k in range(n_videos)], gen, tmp)
    t["num_inference_steps"] = gen.num_inference_steps
    t["hours_per_200_videos"] = t["seconds_per_video"] * 200 / 3600 if t["seconds_per_video"] else None
    return t


def run(overrides: list[str], steps: int, adapters: list[str], gen_videos: int) -> dict:
    results = {"steps": {}}
    for adapter in adapters:
        r = bench([f"adapter={adapter}", *overrides], steps)
        batch = r["setting"]["batch"]
        for kind in ("diffusion", "lsa"):
            r[kind]["clips_per_s"] = batch / r[kind]["median_s"]
        results["steps"][adapter] = r
        results["device"], results["versions"], results["memory_kind"] = r["device"], r["versions"], r["memory_kind"]
    if gen_videos:
        results["generation"] = time_generation(overrides, gen_videos)
    results["overrides"] = overrides
    return results


def markdown(res: dict) -> str:
    lines = [f"# LSA-Bench performance on {res['device']}", "",
             f"torch {res['versions']['torch']}, diffusers {res['versions']['diffusers']}; memory = {res['memory_kind']}; "
             f"overrides: `{' '.join(res['overrides']) or '(defaults)'}`", "",
             "| adapter | step | median (s) | clips/s | peak memory (GiB) | LSA / diffusion |",
             "|---|---|--:|--:|--:|--:|"]
    for adapter, r in res["steps"].items():
        for kind in ("diffusion", "lsa"):
            ratio = f"{r['lsa_over_diffusion']:.2f}x" if kind == "lsa" else ""
            lines.append(f"| {adapter} | {kind} | {r[kind]['median_s']:.3f} | {r[kind]['clips_per_s']:.2f} | "
                         f"{r[kind]['peak_mem_gib']:.2f} | {ratio} |")
    first = next(iter(res["steps"].values()))
    lines += ["", f"setting: {json.dumps(first['setting'])}"]
    if "generation" in res:
        g = res["generation"]
        lines += ["", f"generation: {g['generated']} videos, {g['num_inference_steps']} steps, "
                      f"{g['seconds_per_video']:.2f} s/video -> {g['hours_per_200_videos']:.3f} h per 200 videos"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--adapters", default="unet,lora")
    ap.add_argument("--gen-videos", type=int, default=0, help="also time generating this many videos")
    ap.add_argument("--out-dir", default="results/perf")
    args, overrides = ap.parse_known_args(argv)
    res = run(overrides, args.steps, args.adapters.split(","), args.gen_videos)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / device_slug(res["device"])
    atomic_write_json(stem.with_suffix(".json"), res)
    atomic_write_text(stem.with_suffix(".md"), markdown(res))
    print(markdown(res))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
