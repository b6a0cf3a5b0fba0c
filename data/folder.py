"""A folder of the user's own driving videos as `Clip`s.

data.root holds videos: video files (.mp4, .avi, .mov, .mkv, .webm) and/or folders of frames
(.png/.jpg, in name order). Boxes are optional, one JSON file per video beside it with the same
name (`drive1.mp4` or `drive1/` -> `drive1.json`); the format is in docs/data.md and
`read_boxes_json`. A video without boxes gives clips without boxes (use data.boxes=detector to
fill them with pseudo-labels).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import data_entries, read_versioned_json
from data.base import ClipDataset, require_root
from data.cli import InputError
from data.coco import coco_id
from data.sampling import ClipRef
from data.video_io import FRAME_SUFFIXES, VIDEO_SUFFIXES

BOXES_JSON_VERSION = 1


def _reader_plugin() -> str:
    """imageio plugin for video files: PyAV when installed (faster), else the ffmpeg binary."""
    try:
        import av  # noqa: F401

        return "pyav"
    except ImportError:
        return "FFMPEG"


def discover_videos(root: Path) -> dict[str, Path]:
    """name -> path of every video file and frame folder directly under `root` (sorted by name)."""
    videos: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        is_file_video = p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
        is_frame_dir = p.is_dir() and bool(_frame_files(p))
        if not (is_file_video or is_frame_dir):
            continue
        name = p.stem if p.is_file() else p.name
        if name in videos:
            raise InputError(
                f"{root}: two videos named {name!r} ({videos[name].name} and {p.name}); "
                "rename one (the name also picks the boxes file <name>.json)"
            )
        videos[name] = p
    return videos


def _frame_files(folder: Path) -> list[Path]:
    return [p for p in data_entries(folder, dirs=False) if p.suffix.lower() in FRAME_SUFFIXES]


def probe(path: Path) -> tuple[int, tuple[int, int], float | None]:
    """(number of frames, (H, W), fps or None) without decoding frames into Python."""
    if path.is_dir():
        files = _frame_files(path)
        with Image.open(files[0]) as im:
            return len(files), (im.height, im.width), None
    import imageio.v3 as iio
    import imageio_ffmpeg

    try:
        meta = iio.immeta(path, plugin="FFMPEG")
        n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))  # exact: ffmpeg decodes to null
    except (OSError, RuntimeError, StopIteration) as e:
        raise InputError(f"{path}: unreadable video ({e})") from e
    w, h = meta["size"]
    return int(n), (int(h), int(w)), float(meta["fps"]) if meta.get("fps") else None


def read_boxes_json(path: Path, num_frames: int, video_hw: tuple[int, int], keep_classes: set[int]):
    """Parse a boxes file. Returns ({frame: (boxes [n,4], coco ids [n], track ids [n])}, boxes' (H, W)).

    Entries whose class is not in `keep_classes` (the dynamic set) are dropped; frames at or
    beyond `num_frames` (e.g. cut off by data.max_frames) are ignored.
    """
    doc = read_versioned_json(path, BOXES_JSON_VERSION, "boxes file")
    hw = doc.get("image_size", list(video_hw))
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)):
        raise InputError(f"{path}: image_size must be [height, width] in pixels, got {hw!r}")
    frames = doc.get("frames", {})
    if not isinstance(frames, dict):
        raise InputError(f'{path}: \'frames\' must map frame indices ("0", "1", ...) to lists of boxes')
    out = {}
    for key, entries in frames.items():
        where = f"{path}: frames[{key!r}]"
        if not str(key).isdigit():
            raise InputError(f"{where}: frame keys are 0-based frame indices")
        f = int(key)
        if not isinstance(entries, list):
            raise InputError(f'{where}: must be a list of {{"box": [x1,y1,x2,y2], "label": ...}}')
        if f >= num_frames:
            continue
        boxes, labels, tracks = [], [], []
        for k, e in enumerate(entries):
            w = f"{where}[{k}]"
            box = e.get("box") if isinstance(e, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise InputError(f"{w}: 'box' must be [x1, y1, x2, y2] in pixels")
            if box[2] < box[0] or box[3] < box[1]:
                raise InputError(f"{w}: box {box} has x2 < x1 or y2 < y1")
            label = coco_id(e.get("label"), w)
            track = e.get("track_id", -1)
            if not isinstance(track, int) or isinstance(track, bool):
                raise InputError(f"{w}: track_id must be an integer")
            if label in keep_classes:
                boxes.append(box), labels.append(label), tracks.append(track)
        out[f] = (
            np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(labels, np.int64),
            np.asarray(tracks, np.int64),
        )
    return out, (hw[0], hw[1])


def split_names(cfg, split: str, available: list[str]) -> list[str]:
    """data.<split>.videos lists names; null means every video the other split does not name."""
    other = "test" if split == "train" else "train"
    mine = (cfg.get(split) or {}).get("videos")
    theirs = (cfg.get(other) or {}).get("videos")
    if mine is not None:
        unknown = [str(n) for n in mine if str(n) not in available]
        if unknown:
            raise InputError(
                f"data.{split}.videos names {unknown[:3]}, not found in data.root (videos there: {available[:10]})"
            )
        return [str(n) for n in mine]
    excluded = {str(n) for n in theirs} if theirs is not None else set()
    return [n for n in available if n not in excluded]


class VideoFolder(ClipDataset):
    """Clips from a folder of videos, optionally with boxes per video."""

    name = "folder"

    def __init__(self, cfg, split: str):
        super().__init__(cfg, split)
        root = require_root(cfg)
        found = discover_videos(root)
        if not found:
            raise InputError(f"data.root={root}: no videos ({', '.join(VIDEO_SUFFIXES)}) or frame folders")
        max_frames = cfg.get("max_frames")
        keep = {int(c) for c in cfg.classes}
        self.paths, self.num_frames, self.hw, self.box_hw, self._fps, self.objects = {}, {}, {}, {}, {}, {}
        self.has_boxes: dict[str, bool] = {}
        for name in split_names(cfg, split, list(found)):
            path = found[name]
            n, hw, fps = probe(path)
            n = min(n, int(max_frames)) if max_frames else n
            self.paths[name], self.num_frames[name], self.hw[name] = path, n, hw
            self._fps[name] = float(fps or cfg.fps) / self.stride
            box_file = root / f"{name}.json"
            self.has_boxes[name] = box_file.is_file()
            self.objects[name], self.box_hw[name] = (
                read_boxes_json(box_file, n, hw, keep) if box_file.is_file() else ({}, hw)
            )
        sequences = {name: list(range(n)) for name, n in self.num_frames.items()}
        self._setup(
            cfg,
            sequences,
            cache_key={"root": str(root.resolve())},
            test_params={"max_frames": int(max_frames) if max_frames else None},
        )

    def fps(self, scene: str) -> float:
        return self._fps[scene]

    def source_hw(self, scene: str) -> tuple[int, int]:
        return self.box_hw[scene]

    def source_annotations(self, scene: str, frame_id: int):
        empty = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return self.objects[scene].get(frame_id, empty)

    def decode(self, scene: str, frame_ids: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        path = self.paths[scene]
        if path.is_dir():
            files = _frame_files(path)
            for f in frame_ids:
                yield f, Image.open(files[f]).convert("RGB")
            return
        # A video decodes from its start; with the cache on, every frame up to the end is kept
        # (the FrameCache stores them one by one), so the video is decoded once overall.
        last = self.num_frames[scene] - 1 if self.cache.enabled else max(frame_ids)
        import imageio.v3 as iio

        try:
            for k, frame in enumerate(iio.imiter(path, plugin=_reader_plugin())):
                if k > last:
                    break
                yield k, np.asarray(frame)[..., :3]
        except (OSError, RuntimeError) as e:
            raise InputError(f"{path}: unreadable video ({e})") from e

    def extra_meta(self, ref: ClipRef) -> dict:
        return {
            "path": str(self.paths[ref.scene]),
            "has_boxes": self.has_boxes[ref.scene],
            "boxes_source": "labels" if self.has_boxes[ref.scene] else "none",
        }
