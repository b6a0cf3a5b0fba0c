"""The `testset` stage: the real test clips written once, shared by every row on the same data.

Layout of the stage folder (clip names `clip_0000`, ... in the test split's order):
  frames/<clip>/000000.png ...   lossless real frames (what metrics read, paired by name)
  first_frames/<clip>.png        the conditioning frame every method generates from
  boxes/<clip>.json              {"frames": [{"boxes": [[x1,y1,x2,y2],...], "labels": [...],
                                 "track_ids": [...]}, ...], "meta": {...}}
  videos/<clip>.mp4              for viewing (benchmark.generate.save_mp4)
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from benchmark.store import atomic_write_text
from data.cli import InputError


def clip_name(k: int) -> str:
    return f"clip_{k:04d}"


def write_testset(cfg: dict, out_dir: Path) -> dict:
    from omegaconf import OmegaConf
    from PIL import Image

    from data.registry import build_dataset
    from data.video_io import write_frames, write_video

    data_cfg = OmegaConf.create(cfg["data"])
    clips = build_dataset(data_cfg, "test")
    wanted = int(cfg["data"]["test"]["num_clips"])
    n = min(len(clips), wanted)
    if n == 0:
        raise InputError(f"data={data_cfg.name}: the test split is empty (data.root={data_cfg.get('root')})")
    save_mp4 = bool(cfg.get("benchmark", {}).get("generate", {}).get("save_mp4", True))
    out_dir = Path(out_dir)
    names, shape = [], None
    for k in tqdm(range(n), desc="test clips", unit="clip"):
        clip, name = clips[k], clip_name(k)
        if shape is None:
            shape = clip.frames.shape
        elif clip.frames.shape != shape:
            raise InputError(
                f"test clip {k} has shape {clip.frames.shape}, clip 0 {shape}: "
                f"the test clips must share frame count and size"
            )
        write_frames(out_dir / "frames" / name, clip.frames)
        (out_dir / "first_frames").mkdir(parents=True, exist_ok=True)
        Image.fromarray(clip.frames[0]).save(out_dir / "first_frames" / f"{name}.png")
        per_frame = [
            {"boxes": b.tolist(), "labels": lab.tolist(), "track_ids": t.tolist()}
            for b, lab, t in zip(clip.boxes, clip.labels, clip.track_ids)
        ]
        atomic_write_text(
            out_dir / "boxes" / f"{name}.json", json.dumps({"frames": per_frame, "meta": clip.meta}, default=str) + "\n"
        )
        if save_mp4:
            write_video(out_dir / "videos" / f"{name}.mp4", clip.frames, fps=float(clip.meta.get("fps", 7.0)))
        names.append(name)
    T, H, W = int(shape[0]), int(shape[1]), int(shape[2])
    return {
        "frames": out_dir / "frames",
        "first_frames_dir": out_dir / "first_frames",
        "boxes": out_dir / "boxes",
        "clips": names,
        "num_videos": n,
        "num_frames": T,
        "height": H,
        "width": W,
        "num_available": len(clips),
        "num_requested": wanted,
    }


def read_clip(testset_dir: str | Path, name: str):
    """One test clip back from a testset folder: its lossless frames, boxes, labels and track ids (what
    metrics.evaluate needs when the clips' own boxes are the detection reference, det.reference=dataset)."""
    from data.clip import Clip, read_box_record
    from data.video_io import read_video

    testset_dir = Path(testset_dir)
    boxes, labels, track_ids, meta = read_box_record(testset_dir / "boxes" / f"{name}.json")
    return Clip(read_video(testset_dir / "frames" / name), boxes, labels, track_ids, meta)
