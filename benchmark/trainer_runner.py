"""The real stage runner: the one place where the benchmark calls trainers/ and metrics/.

The contract of each method is in `benchmark.stage_runner.StageRunner`. Each stage runs in this
process; heavy objects are dropped when a stage ends so the next one starts with free memory.
"""

from __future__ import annotations

import gc
import json
import pickle
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmark.shards import Shard, shard_names
from benchmark.stages import select
from benchmark.testset import read_clip, write_testset
from data.atomic import atomic_write_bytes, data_entries
from data.device import resolve_device, torch_dtype
from data.video_io import read_frame
from metrics.per_video import PER_VIDEO_FILE


def release_memory():
    """Free what a finished stage left: Python garbage and the CUDA cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _generation_setup(cfg: dict, test_clips: Path):
    """(config, benchmark.generate node, device, dtype, clip names of the testset stage)."""
    c = OmegaConf.create(cfg)
    gen = c.benchmark.generate
    device = resolve_device(gen.get("device"))
    dtype = torch_dtype(gen.get("dtype", "fp32") if device != "cpu" else "fp32", "generate.dtype")
    firsts_dir = Path(test_clips) / "first_frames"
    names = [p.stem for p in data_entries(firsts_dir, dirs=False) if p.suffix == ".png"] if firsts_dir.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{firsts_dir}: no first frames (the testset stage is incomplete)")
    return c, gen, device, dtype, names


def _generation_result(out_dir: Path, names, gen, timing: dict, device: str, **params) -> dict:
    """What a generate stage returns, for the SVD pipeline and Ctrl-V alike (Table I reads it)."""
    return {
        "frames": Path(out_dir) / "frames",
        "num_videos": len(names),
        "num_frames": int(gen.num_frames),
        "seconds": timing["seconds"],
        "seconds_per_video": timing["seconds_per_video"],
        "generated_now": timing["generated"],
        "device": device,
        **params,
    }


def _shard_of(names: list[str], gen, shard: Shard | None):
    """(the clip names this call generates, the generate settings for them). A shard's block starts at
    clip `start` of the full list: its seed moves by `start`, so its clip k gets seed + start + k, the
    seed of that clip in an unsharded run (generate_videos seeds the k-th clip it is given with seed + k)."""
    if shard is None:
        return names, gen
    block, start = shard_names(names, shard.index, shard.count)
    gen = OmegaConf.create(OmegaConf.to_container(gen, resolve=True))
    gen.seed = int(gen.seed) + start
    return block, gen


def _shard_record(res: dict, timing: dict) -> dict:
    """A generate shard's record: its result plus the per-video times the merge needs."""
    return {**res, "times": list(timing["times"])}


def _merge_generation(out_dir: Path, cfg: dict, test_clips: Path, parts: list[dict]) -> dict:
    """The generate stage's result from its shards' records: every clip must be there; the timing is
    that of all generated videos together (generation_timing over every shard's per-video times)."""
    from trainers.timing import generation_timing

    _, gen, _, _, names = _generation_setup(cfg, test_clips)
    missing = [n for n in names if not (Path(out_dir) / "frames" / n).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{Path(out_dir) / 'frames'}: the shards left no video for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}"
        )
    timing = generation_timing([t for p in parts for t in p["times"]], len(names))
    counts = {k: parts[0][k] for k in ("num_params", "num_params_unique") if k in parts[0]}
    return _generation_result(out_dir, names, gen, timing, parts[0]["device"], **counts, shards=len(parts))


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
            release_memory()
        # only the main process writes summary.json (several processes under `accelerate launch`)
        path = Path(out_dir) / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        return {
            "log": Path(out_dir) / "log.jsonl",
            "unet": Path(out_dir) / "unet",
            "steps": summary.get("global_step"),
            "trainable_params": summary.get("trainable_params"),
        }

    def run_generate(
        self, stage, cfg: dict, checkpoint: Path | None, out_dir: Path, *, test_clips: Path, shard: Shard | None = None
    ) -> dict:
        """The test videos of a trained row (its last epoch's exported U-Net) or of the base model;
        with `shard`, only that shard's clips (same seeds), returning the shard's record."""
        from benchmark.generate import generate_videos, load_pipeline
        from trainers.backbones import backbone_name, generation

        c, gen, device, dtype, names = _generation_setup(cfg, test_clips)
        names, gen = _shard_of(names, gen, shard)
        svd = backbone_name(c.model) == "svd"
        trained = Path(checkpoint) / ("unet" if svd else "transformer") if checkpoint else None
        if trained is not None and not trained.is_dir():
            raise FileNotFoundError(f"{trained}: the train stage has no exported {trained.name}")
        firsts_dir = Path(test_clips) / "first_frames"
        firsts = [read_frame(firsts_dir / f"{n}.png") for n in names]
        video_fn = None
        if svd:
            pipe = load_pipeline(c.model, trained, device=device, dtype=dtype)
            nets = (pipe.unet, pipe.vae, pipe.image_encoder)
        else:  # another backbone (model.backbone): its own pipeline and call
            load, video = generation(c.model)
            pipe = load(c.model, trained, device=device, dtype=dtype)
            nets = (pipe.transformer, pipe.vae, pipe.text_encoder)

            def video_fn(frame0, g, pipe=pipe):
                return video(c.model, pipe, frame0, gen, g)

        num_params = sum(p.numel() for m in nets for p in m.parameters())
        try:
            timing = generate_videos(pipe, firsts, names, gen, out_dir, video_fn=video_fn)
        finally:
            del pipe
            release_memory()
        res = _generation_result(out_dir, names, gen, timing, device, num_params=num_params)
        return res if shard is None else _shard_record(res, timing)

    def merge_generate(self, stage, cfg: dict, out_dir: Path, parts: list[dict], *, test_clips: Path) -> dict:
        """The stage's result once every shard generated its clips (benchmark/shards.py)."""
        return _merge_generation(out_dir, cfg, test_clips, parts)  # SVD and Ctrl-V alike

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
            release_memory()
        export = "unet" if c.ctrlv.stage == "bbox" else "controlnet"
        return {"log": Path(out_dir) / "log.jsonl", export: Path(out_dir) / export}

    def run_generate_ctrlv(
        self,
        stage,
        cfg: dict,
        bbox_run: Path,
        box2video_run: Path,
        out_dir: Path,
        *,
        test_clips: Path,
        shard: Shard | None = None,
    ) -> dict:
        """Ctrl-V's two-stage pipeline on each test clip's first frame and given boxes (with `shard`,
        that shard's clips, as run_generate)."""
        from trainers.ctrlv.pipeline import CtrlVInputs, CtrlVPipeline, generate_ctrlv_videos

        c, gen, device, dtype, names = _generation_setup(cfg, test_clips)
        names, gen = _shard_of(names, gen, shard)
        inputs = [CtrlVInputs.from_testset(test_clips, n) for n in names]
        pipe = CtrlVPipeline.from_runs(c, bbox_run, box2video_run, device=device, dtype=dtype)
        try:
            r = generate_ctrlv_videos(pipe, inputs, names, gen, out_dir)
        finally:
            del pipe
            release_memory()
        res = _generation_result(
            out_dir, names, gen, r, device, num_params=r["num_params"], num_params_unique=r.get("num_params_unique")
        )
        return res if shard is None else _shard_record(res, r)

    def run_evaluate(
        self, stage, cfg: dict, videos_dir: Path, out_dir: Path, *, real_dir: Path, shard: Shard | None = None
    ) -> dict:
        """metrics.evaluate on the real test clips vs the generated videos, paired by clip name; the
        per-video features and detections go to per_video.npz (bootstrap intervals of the table). With
        `shard`: the features and detections of that shard's clips (metrics.evaluate.extract_features)
        in <shard folder>/features.pkl, for merge_evaluate."""
        from metrics.evaluate import evaluate, extract_features

        names = [p.name for p in data_entries(real_dir, dirs=True)]
        if shard is not None:
            # blocks of whole I3D batches: FVD's batches are then those of the unsharded run
            align = select(cfg, "metrics.fvd.batch_size", 1) if "fvd" in select(cfg, "metrics.metrics", []) else 1
            names, _ = shard_names(names, shard.index, shard.count, align=int(align))
        missing = [n for n in names if not (Path(videos_dir) / n).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{videos_dir}: no generated video for {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        real, fake = [Path(real_dir) / n for n in names], [Path(videos_dir) / n for n in names]
        if "det" in select(cfg, "metrics.metrics", []) and select(cfg, "metrics.det.reference") == "dataset":
            real = [read_clip(Path(real_dir).parent, n) for n in names]  # the clips' own boxes are the reference
        try:
            if shard is None:
                return evaluate(
                    real,
                    fake,
                    cfg,
                    names=names,
                    detections_dir=Path(out_dir) / "detections",
                    per_video=Path(out_dir) / PER_VIDEO_FILE,
                )
            part = extract_features(real, fake, cfg, names=names, detections_dir=Path(out_dir) / "detections")
        finally:
            release_memory()
        path = Path(shard.folder) / "features.pkl"
        atomic_write_bytes(path, pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
        return {"features_file": path, "num_videos": len(names), "names": names}

    def merge_evaluate(
        self, stage, cfg: dict, out_dir: Path, parts: list[dict], *, videos_dir: Path, real_dir: Path
    ) -> dict:
        """metrics.evaluate's result from the shards' features, in clip order (= the unsharded result)."""
        from metrics.evaluate import merge_features

        names = [p.name for p in data_entries(real_dir, dirs=True)]
        got = [n for p in parts for n in p["names"]]
        if got != names:
            raise ValueError(
                f"{out_dir}: the shards scored {len(got)} videos, not the {len(names)} test clips in "
                f"order; delete {Path(out_dir) / 'shards'} to redo them"
            )
        features = []
        for p in parts:
            with open(p["features_file"], "rb") as f:
                features.append(pickle.load(f))
        return merge_features(features, cfg, per_video=Path(out_dir) / PER_VIDEO_FILE)
