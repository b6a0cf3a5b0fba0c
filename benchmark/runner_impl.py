"""The real stage runner: the one place where the benchmark calls trainers/ and metrics/.

The contract of each method is in `benchmark.executors.StageRunner`. Each stage runs in this
process; heavy objects are dropped when a stage ends so the next one starts with free memory.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from benchmark.testset import write_testset

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _device(name: str | None) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def _release():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generation_setup(cfg: dict, test_clips: Path):
    """(config, benchmark.generate node, device, dtype, clip names of the testset stage)."""
    c = OmegaConf.create(cfg)
    gen = c.benchmark.generate
    device = _device(gen.get("device"))
    dtype = _DTYPES[gen.get("dtype", "fp32") if device != "cpu" else "fp32"]
    firsts_dir = Path(test_clips) / "first_frames"
    names = sorted(p.stem for p in firsts_dir.glob("*.png"))
    if not names:
        raise FileNotFoundError(f"{firsts_dir}: no first frames (the testset stage is incomplete)")
    return c, gen, device, dtype, names


def _generation_result(out_dir: Path, names, gen, timing: dict, device: str, **params) -> dict:
    """What a generate stage returns, for the SVD pipeline and Ctrl-V alike (Table I reads it)."""
    return {"frames": Path(out_dir) / "frames", "num_videos": len(names), "num_frames": int(gen.num_frames),
            "seconds": timing["seconds"], "seconds_per_video": timing["seconds_per_video"],
            "generated_now": timing["generated"], "device": device, **params}


class TrainerRunner:
    is_fake = False

    def run_testset(self, stage, cfg: dict, out_dir: Path) -> dict:
        return write_testset(cfg, out_dir)

    def run_train(self, stage, cfg: dict, init_from: Path | None, out_dir: Path) -> dict:
        """One epoch of one row: `cfg['train']['epochs']` is this stage's epoch, `init_from` the
        previous epoch's stage folder (the trainer takes its newest checkpoint); an interrupted
        attempt resumes from out_dir's own checkpoints."""
        from trainers.loop import train
        c = OmegaConf.create(cfg)
        c.train.out_dir = str(out_dir)
        c.train.init_from = str(init_from) if init_from else None
        c.train.resume = "auto"
        try:
            train(c)
        finally:
            _release()
        # only the main process writes summary.json (several processes under `accelerate launch`)
        path = Path(out_dir) / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        return {"log": Path(out_dir) / "log.jsonl", "unet": Path(out_dir) / "unet",
                "steps": summary.get("global_step"), "trainable_params": summary.get("trainable_params")}

    def run_generate(self, stage, cfg: dict, checkpoint: Path | None, out_dir: Path, *, test_clips: Path) -> dict:
        """The test videos of a trained row (its last epoch's exported U-Net) or of the base model."""
        from benchmark.generate import generate_videos, load_pipeline
        c, gen, device, dtype, names = _generation_setup(cfg, test_clips)
        unet_dir = Path(checkpoint) / "unet" if checkpoint else None
        if unet_dir is not None and not unet_dir.is_dir():
            raise FileNotFoundError(f"{unet_dir}: the train stage has no exported U-Net")
        firsts_dir = Path(test_clips) / "first_frames"
        firsts = [np.asarray(Image.open(firsts_dir / f"{n}.png").convert("RGB")) for n in names]
        pipe = load_pipeline(c.model, unet_dir, device=device, dtype=dtype)
        num_params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.image_encoder) for p in m.parameters())
        try:
            timing = generate_videos(pipe, firsts, names, gen, out_dir)
        finally:
            del pipe
            _release()
        return _generation_result(out_dir, names, gen, timing, device, num_params=num_params)

    def run_ctrlv_train(self, stage, cfg: dict, backbone: Path | None, out_dir: Path) -> dict:
        """One Ctrl-V stage (trainers/ctrlv) for all its epochs; Box2Video steers `backbone`/unet."""
        from trainers.ctrlv.train import train_stage
        c = OmegaConf.create(cfg)
        c.train.out_dir = str(out_dir)
        c.train.init_from = None
        c.train.resume = "auto"
        if c.ctrlv.stage == "box2video":
            c.ctrlv.backbone = str(Path(backbone) / "unet") if backbone else None
        try:
            train_stage(c)
        finally:
            _release()
        export = "unet" if c.ctrlv.stage == "bbox" else "controlnet"
        return {"log": Path(out_dir) / "log.jsonl", export: Path(out_dir) / export}

    def run_generate_ctrlv(self, stage, cfg: dict, bbox_run: Path, box2video_run: Path, out_dir: Path, *,
                           test_clips: Path) -> dict:
        """Ctrl-V's two-stage pipeline on each test clip's first frame and given boxes."""
        from trainers.ctrlv.pipeline import CtrlVInputs, CtrlVPipeline, generate_ctrlv_videos
        c, gen, device, dtype, names = _generation_setup(cfg, test_clips)
        inputs = [CtrlVInputs.from_testset(test_clips, n) for n in names]
        pipe = CtrlVPipeline.from_runs(c, bbox_run, box2video_run, device=device, dtype=dtype)
        try:
            r = generate_ctrlv_videos(pipe, inputs, names, gen, out_dir)
        finally:
            del pipe
            _release()
        return _generation_result(out_dir, names, gen, r, device, num_params=r["num_params"],
                                  num_params_unique=r.get("num_params_unique"))

    def run_evaluate(self, stage, cfg: dict, videos_dir: Path, out_dir: Path, *, real_dir: Path) -> dict:
        """metrics.evaluate on the real test clips vs the generated videos, paired by clip name."""
        from metrics.evaluate import evaluate
        names = sorted(p.name for p in Path(real_dir).iterdir() if p.is_dir())
        missing = [n for n in names if not (Path(videos_dir) / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"{videos_dir}: no generated video for {missing[:5]}"
                                    f"{' ...' if len(missing) > 5 else ''}")
        try:
            return evaluate([Path(real_dir) / n for n in names], [Path(videos_dir) / n for n in names],
                            cfg, names=names, detections_dir=Path(out_dir) / "detections")
        finally:
            _release()
