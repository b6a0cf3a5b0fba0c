"""Generating videos with diffusers' StableVideoDiffusionPipeline (the paper's inference).

The benchmark's generate stage (`generate_videos`) and the command below share `generate_video`:
one first frame, the `benchmark.generate` settings and one seed give one video. Clip k of a set
uses the seed `seed + k`, so every method and every rerun sees the same noise. The stage writes
frame folders (lossless, what the metrics read) and optionally mp4 for viewing; a clip whose folder
exists is not generated again, so an interrupted stage resumes where it stopped.

Command line (the same settings as the profile's generate stage):

  python -m benchmark.generate INPUT [INPUT ...] --model MODEL --out DIR [--frames] [--seed N]
                               [--profile smoke|paper] [--overwrite] [key=value ...]

  INPUT   an image (.png/.jpg/.jpeg: its first frame), a folder of images (one video per image;
          a testset stage folder runs/<hash>/ stands for its first_frames/), or a test-clip list
          (test_clips.json, docs/data.md: its clips are read from the dataset the data config
          names, e.g. data=kitti data.root=/data/kitti_tracking; videos are named clip_0000, ...)
  MODEL   a run folder (trainers.train's, or a benchmark train stage runs/<hash>/: its exported
          unet/ and its config's model and generate settings), an exported U-Net folder (the base
          pipeline is the config's model.svd), or a full SVD pipeline: a local folder, a hub id, tiny
  DIR     gets videos/<name>.mp4 (H.264), frames/<name>/000000.png ... with --frames, and
          generation.json: the model, the settings and, per video, its input and seed
  key=value  overrides of the composed config (configs/train.yaml + configs/benchmark/<profile>.yaml),
          e.g. benchmark.generate.num_inference_steps=25 benchmark.generate.device=cuda model=svd

Rerunning the same command skips the videos already written with the same model and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data.atomic import data_entries
from data.cli import InputError, MissingFile, UserError, command
from data.video_io import FRAME_SUFFIXES, kept_video, read_frame, write_frames, write_video
from trainers.timing import generation_timing

RECORD = "generation.json"
RECORD_VERSION = 1
# The pipeline keyword arguments generate_video takes from `benchmark.generate` (configs/benchmark/*.yaml).
SETTINGS = (
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "fps",
    "motion_bucket_id",
    "noise_aug_strength",
    "min_guidance_scale",
    "max_guidance_scale",
    "decode_chunk_size",
)


def device_and_dtype(gen_cfg) -> tuple[str, torch.dtype]:
    """`benchmark.generate.device` (auto: the GPU when there is one) and `.dtype` (fp32 on the CPU),
    read as the generate stage reads them (benchmark/trainer_runner.py)."""
    from data.device import resolve_device, torch_dtype

    device = resolve_device(gen_cfg.get("device"))
    try:
        return device, torch_dtype(
            gen_cfg.get("dtype", "fp32") if device != "cpu" else "fp32", "benchmark.generate.dtype"
        )
    except ValueError as e:
        raise InputError(str(e)) from e


def load_pipeline(
    model_cfg, unet_dir: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32
):
    """The SVD pipeline of `model.svd`, with a fine-tuned U-Net folder swapped in when given."""
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    from trainers.models import resolve_svd_source

    if model_cfg.svd == "full-random":
        raise UserError(
            "model=full-random has random weights: it is for performance measurements, not for generating videos"
        )
    source = resolve_svd_source(model_cfg)
    # every part in `dtype`: from fp16 variant files (the paper profile's model.variant=fp16), transformers
    # would otherwise keep the image encoder in fp16 beside fp32 diffusers parts on the CPU
    kw = {"torch_dtype": dtype}
    if unet_dir is not None:
        kw["unet"] = UNetSpatioTemporalConditionModel.from_pretrained(unet_dir, **kw)
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            source, revision=model_cfg.get("revision"), variant=model_cfg.get("variant"), **kw
        )
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not load the SVD pipeline from model.svd={source!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_video(pipe, frame0: np.ndarray, gen_cfg, seed: int) -> np.ndarray:
    """One video from its first frame (uint8 [H,W,3]) with the `benchmark.generate` settings and the
    given seed (a CPU generator, so a seed gives the same noise on every device): uint8 [T,H,W,3]."""
    from trainers.backbones.svd import svd_video  # lazily: it loads the trainer's modules

    return svd_video(pipe, frame0, gen_cfg, torch.Generator(device="cpu").manual_seed(int(seed)))


def generate_videos(
    pipe, first_frames: Sequence[np.ndarray], names: Sequence[str], gen_cfg, out_dir: str | Path, video_fn=None
) -> dict:
    """first_frames: uint8 [H,W,3] per clip. Writes out_dir/frames/<name>/ (+ out_dir/videos/<name>.mp4).

    The k-th clip given is seeded with gen_cfg.seed + k: a shard of the test set (benchmark/shards.py)
    passes its block of clips with the seed moved by the block's start, so each clip keeps its seed.

    `video_fn(frame0, generator) -> uint8 [T,H,W,3]` generates with another backbone's pipeline
    (trainers/backbones); without it `pipe` is the SVD pipeline, called with gen_cfg's SVD settings.

    Returns timing: seconds spent generating (resumed clips excluded) and the number generated now.
    """
    out_dir = Path(out_dir)
    device = pipe.device
    times: list[float] = []  # per generated video
    expected = int(gen_cfg.num_frames) if video_fn is None else None  # another backbone: its own count
    mp4s = out_dir / "videos" if gen_cfg.get("save_mp4", True) else None
    for k, (frame0, name) in enumerate(tqdm(list(zip(first_frames, names)), desc="generate", unit="video")):
        folder = out_dir / "frames" / name
        if folder.is_dir() and kept_video(folder, mp4s and mp4s / f"{name}.mp4", expected):
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if video_fn is not None:
            frames = video_fn(frame0, torch.Generator(device="cpu").manual_seed(int(gen_cfg.seed) + k))
        else:
            frames = generate_video(pipe, frame0, gen_cfg, int(gen_cfg.seed) + k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if gen_cfg.get("save_mp4", True):
            write_video(out_dir / "videos" / f"{name}.mp4", frames, fps=float(gen_cfg.fps))
        write_frames(folder, frames)  # last: a clip counts as done only once its frames exist
    return generation_timing(times, len(names))


# ------------------------------------------------------------------------------------ the command
class UsageError(UserError):
    """A bad flag or argument of the command line."""


_OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.\-]*=")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.generate", add_help=False)
    p.add_argument("items", nargs="*")
    p.add_argument("--model")
    p.add_argument("--out")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--seed", type=int)
    p.add_argument("--frames", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 itself; keep the one error policy
        raise UsageError(f"{message} (python -m benchmark.generate --help)")


def parse_args(argv: list[str]):
    """(options, inputs, overrides): an item that looks like key=value and is not an existing path is
    a config override, any other item an input."""
    p = _parser()
    p.__class__ = _Parser
    args = p.parse_intermixed_args(argv)
    inputs, overrides = [], []
    for a in args.items:
        (overrides if _OVERRIDE.match(a) and not Path(a).exists() else inputs).append(a)
    return args, inputs, overrides


def resolve_model(model: str) -> dict:
    """{'kind': run | unet | pipeline, 'unet': folder or None, 'config': the run's config file or None,
    'svd': a model.svd value or None} for the --model argument."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():  # a run folder
            cfg = path / "config.yaml"
            return {"kind": "run", "unet": path / "unet", "config": cfg if cfg.is_file() else None, "svd": None}
        if (path / "model_index.json").is_file():  # a whole diffusers pipeline
            return {"kind": "pipeline", "unet": None, "config": None, "svd": str(path.resolve())}
        config = path / "config.json"
        if config.is_file():
            try:
                cls = json.loads(config.read_text()).get("_class_name")
            except json.JSONDecodeError as e:
                raise InputError(f"{config}:{e.lineno}: not valid JSON ({e.msg})") from e
            if cls != "UNetSpatioTemporalConditionModel":
                raise InputError(f"--model {model}: {config} describes a {cls}, not a UNetSpatioTemporalConditionModel")
            run_cfg = path.parent / "config.yaml"  # <run>/unet: the run's config comes along
            return {"kind": "unet", "unet": path, "config": run_cfg if run_cfg.is_file() else None, "svd": None}
        raise InputError(
            f"--model {model}: a folder, but neither a run folder (with unet/), an exported U-Net "
            f"(config.json of a UNetSpatioTemporalConditionModel) nor a pipeline (model_index.json)"
        )
    if path.exists():
        raise InputError(f"--model {model}: a file; give a run folder, a U-Net folder, a pipeline folder or a hub id")
    from benchmark.config import _looks_like_hub_id

    if model in ("tiny",) or _looks_like_hub_id(model):
        return {"kind": "pipeline", "unet": None, "config": None, "svd": model}
    raise MissingFile(f"--model {model}: no such folder, and not a hub id (org/name) either")


def compose(profile: str, overrides: Sequence[str], model: dict):
    """The config the videos are made with: configs/train.yaml + the profile + the overrides; a run's
    own config (its model, cond, data unless the command line gives data=..., and for a benchmark stage
    its generate settings) comes over that, then the command line's key.path=value overrides again
    (they win)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from benchmark.config import list_profiles
    from trainers.config import load_config
    from trainers.config_schema import compose_error

    if profile not in list_profiles():
        raise UsageError(f"--profile {profile}: unknown; valid: {', '.join(list_profiles())} (configs/benchmark/)")
    cfg = load_config([f"+benchmark={profile}", *overrides])
    if model["config"] is not None:
        try:
            run = OmegaConf.load(model["config"])
        except (OSError, OmegaConfBaseException) as e:
            raise InputError(f"{model['config']}: not a readable run config ({e})") from e
        # the run's data (and so its frame count and size) unless the command line picks a dataset
        user_data = any(o.split("=", 1)[0].lstrip("+~") == "data" for o in overrides)
        keys = [k for k in ("model", "cond") + (() if user_data else ("data",)) if k in run]
        over = {k: run[k] for k in keys}
        if "benchmark" in run and "generate" in run.benchmark:
            over["benchmark"] = {"generate": run.benchmark.generate}
        dotted = [o for o in overrides if "." in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
        try:
            cfg = OmegaConf.merge(cfg, over, OmegaConf.from_dotlist(dotted))
        except OmegaConfBaseException as e:
            raise compose_error(e, dotted) from e
    if model["svd"] is not None:
        cfg.model.svd = model["svd"]
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise compose_error(e, list(overrides)) from e
    return cfg


def collect_inputs(items: Sequence[str], cfg) -> list[tuple[str, str, np.ndarray]]:
    """(video name, where its first frame came from, the frame uint8 [H,W,3]) per input video."""
    out: list[tuple[str, str, np.ndarray]] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise MissingFile(f"input {item}: no such file or folder")
        if path.is_dir():
            folder = path / "first_frames" if (path / "first_frames").is_dir() else path
            files = [p for p in data_entries(folder, dirs=False) if p.suffix.lower() in FRAME_SUFFIXES]
            if not files:
                raise InputError(f"input {item}: the folder holds no {'/'.join(FRAME_SUFFIXES)} images")
            out += [(p.stem, str(p), read_frame(p)) for p in files]
        elif path.suffix.lower() in FRAME_SUFFIXES:
            out.append((path.stem, str(path), read_frame(path)))
        elif path.suffix.lower() == ".json":
            out += _test_list_inputs(path, cfg)
        else:
            raise InputError(
                f"input {item}: not an image ({', '.join(FRAME_SUFFIXES)}), a folder of images or "
                f"a test-clip list (.json)"
            )
    seen: dict[str, str] = {}
    for name, src, _ in out:
        if not name or name.startswith("."):  # e.g. `...png`: hidden, or `..`, the folder above
            raise InputError(
                f"input {src}: gives the video name {name!r}, which starts with '.' (hidden names are "
                f"never outputs); rename the file"
            )
        if name in seen:
            raise InputError(f"inputs {seen[name]} and {src} both give a video named {name!r}; rename one")
        seen[name] = src
    if not out:
        raise UsageError("no inputs: give images, folders of images or a test-clip list")
    return out


def _test_list_overrides(items: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """data.clip_len / data.stride of the test-clip lists among the inputs (so the videos have the
    listed clips' length), for the keys the command line does not set; lists that disagree fail."""
    from data.atomic import read_versioned_json
    from data.test_split import TEST_CLIPS_VERSION

    given = {o.split("=", 1)[0] for o in overrides}
    found: dict[str, tuple[object, str]] = {}
    for item in items:
        path = Path(item).expanduser()
        if not (path.is_file() and path.suffix.lower() == ".json"):
            continue
        params = read_versioned_json(path, TEST_CLIPS_VERSION, "test clip list").get("params") or {}
        for key in ("clip_len", "stride"):
            if key not in params or f"data.{key}" in given:
                continue
            if key in found and found[key][0] != params[key]:
                raise InputError(
                    f"test-clip lists {found[key][1]} and {path} differ in {key} ({found[key][0]} vs "
                    f"{params[key]}); generate them separately"
                )
            found[key] = (params[key], str(path))
    return [f"data.{k}={v}" for k, (v, _) in found.items()]


def _test_list_inputs(path: Path, cfg) -> list[tuple[str, str, np.ndarray]]:
    """The first frames of the clips a test_clips.json lists, read from the config's dataset; the list's
    own parameters (clip length, stride, number of clips) are used unless the command line set them."""
    from omegaconf import OmegaConf

    from benchmark.testset import clip_name
    from data.atomic import read_versioned_json
    from data.registry import build_dataset
    from data.test_split import TEST_CLIPS_VERSION

    doc = read_versioned_json(path, TEST_CLIPS_VERSION, "test clip list")
    if doc.get("dataset") != cfg.data.name:
        raise InputError(
            f"{path}: lists clips of dataset {doc.get('dataset')!r} but the config's data is "
            f"{cfg.data.name!r}; add data={doc.get('dataset')} data.root=/path/to/it"
        )
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    params = doc.get("params") or {}
    for key in ("clip_len", "stride"):
        if key in params:
            data[key] = params[key]
    for key in ("window_step", "select"):  # in the list's params only when not the default
        data.test[key] = params.get(key)
    data.test.num_clips = int(params.get("num_clips", len(doc.get("clips", []))))
    data.test.clips_file = str(path.resolve())
    clips = build_dataset(data, "test")
    return [(clip_name(k), f"{path}: clips[{k}]", clips[k].frames[0]) for k in range(len(clips))]


def _signature(model: dict, gen: dict, model_cfg: dict) -> str:
    """What makes two runs' videos interchangeable: the model and every generation setting."""
    doc = {"model": {k: str(v) for k, v in model.items()}, "model_cfg": model_cfg, "generate": gen}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_record(out: Path) -> dict | None:
    p = out / RECORD
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); delete it or use --overwrite") from e


def run(
    inputs: Sequence[str],
    model: str,
    out: str | Path,
    *,
    profile: str = "smoke",
    overrides: Sequence[str] = (),
    seed: int | None = None,
    frames: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """The command without its argument parsing: writes the videos and returns generation.json's content."""
    from omegaconf import OmegaConf

    from data.atomic import atomic_write_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: a file, not a folder")
    m = resolve_model(model)
    cfg = compose(profile, [*_test_list_overrides(inputs, overrides), *overrides], m)
    gen = cfg.benchmark.generate
    if seed is not None:
        gen.seed = int(seed)
    todo = collect_inputs(inputs, cfg)
    gen_dict = {k: gen[k] for k in (*SETTINGS, "seed")}
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    sig = _signature(m, gen_dict, model_cfg)
    record = _read_record(out) if not overwrite else None
    if record is not None and record.get("signature") != sig:
        raise UserError(
            f"--out {out}: holds videos made with another model or other settings ({out / RECORD}); "
            f"choose another folder, or --overwrite to replace them"
        )
    videos = dict((record or {}).get("videos", {}))
    doc = {
        "version": RECORD_VERSION,
        "signature": sig,
        "profile": profile,
        "model": {
            "argument": model,
            "kind": m["kind"],
            "unet": str(m["unet"]) if m["unet"] else None,
            "run_config": str(m["config"]) if m["config"] else None,
            "svd": model_cfg.get("svd"),
        },
        "settings": gen_dict,
        "overrides": list(overrides),
        "videos": videos,
    }
    device, dtype = device_and_dtype(gen)
    doc["device"], doc["dtype"] = device, str(dtype).replace("torch.", "")
    pipe = None
    bar = tqdm(todo, desc="generate", unit="video", file=sys.stderr, **({} if progress else {"disable": True}))
    for k, (name, src, frame0) in enumerate(bar):
        s = int(gen.seed) + k
        mp4, folder = out / "videos" / f"{name}.mp4", out / "frames" / name
        prev = videos.get(name)
        if (
            prev
            and prev.get("seed") == s
            and prev.get("input") == src
            and kept_video(folder if frames else None, mp4, prev.get("num_frames"))
        ):
            continue
        if pipe is None:
            pipe = load_pipeline(cfg.model, m["unet"], device=device, dtype=dtype)
        t0 = time.perf_counter()
        video = generate_video(pipe, frame0, gen, s)
        seconds = time.perf_counter() - t0
        if frames:
            write_frames(folder, video)
        write_video(mp4, video, fps=float(gen.fps))
        videos[name] = {
            "input": src,
            "seed": s,
            "mp4": str(mp4.relative_to(out)),
            "frames": str(folder.relative_to(out)) if frames else None,
            "num_frames": int(video.shape[0]),
            "height": int(video.shape[1]),
            "width": int(video.shape[2]),
            "seconds": round(seconds, 3),
        }
        atomic_write_json(out / RECORD, doc)  # after each video: an interrupted run keeps its record
    atomic_write_json(out / RECORD, doc)
    return doc


@command
def main(argv: list[str] | None = None) -> int:
    """Errors follow data/cli.py: a bad input, model or flag is one line and exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    args, inputs, overrides = parse_args(argv)
    if args.help:
        print(__doc__)
        return 0
    missing = [f for f, v in (("--model", args.model), ("--out", args.out)) if not v]
    if missing:
        raise UsageError(f"{' and '.join(missing)} required (python -m benchmark.generate --help)")
    if not inputs:
        raise UsageError("no inputs: give images, folders of images or a test-clip list")
    doc = run(
        inputs,
        args.model,
        args.out,
        profile=args.profile,
        overrides=overrides,
        seed=args.seed,
        frames=args.frames,
        overwrite=args.overwrite,
    )
    print(
        f"{len(doc['videos'])} video(s) in {Path(args.out) / 'videos'}; seeds and settings in {Path(args.out) / RECORD}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
