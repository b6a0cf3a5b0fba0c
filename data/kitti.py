"""KITTI Tracking (camera 02) as `Clip`s.

Layout under data.root:  training/image_02/SSSS/NNNNNN.png  and  training/label_02/SSSS.txt.
Each label line: frame track_id type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]
(the KITTI devkit's order). DontCare lines (track_id -1) and the types in data.ignore_types are
dropped; every other type must be listed in data.classes (type -> COCO id), so a typo or an
unexpected type is an error naming the file and line rather than a silently lost object.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import data_entries
from data.base import ClipDataset, require_root
from data.cli import InputError, MissingFile
from data.sampling import ClipRef

_INT_FIELDS = {"frame", "track_id", "occluded"}


@dataclass(frozen=True)
class KittiLabel:
    """One label line. `line` is the 1-based line number in its file (kept for error messages)."""

    frame: int
    track_id: int
    type: str
    truncated: float
    occluded: int
    alpha: float
    x1: float
    y1: float
    x2: float
    y2: float
    h: float
    w: float
    l: float
    x: float
    y: float
    z: float
    rotation_y: float
    score: float | None = None
    line: int = field(default=0, compare=False)

    @property
    def bbox(self) -> np.ndarray:
        return np.array([self.x1, self.y1, self.x2, self.y2], np.float64)


KITTI_FIELDS = tuple(f.name for f in fields(KittiLabel))[:17]


def parse_label_line(text: str, where: str = "<label>", line: int = 0) -> KittiLabel:
    """Parse one label line; `where` (file name) and `line` appear in every error."""
    tokens = text.split()
    if len(tokens) not in (17, 18):
        raise InputError(
            f"{where}:{line}: expected 17 fields (or 18 with a score), got {len(tokens)}: {text.strip()[:80]!r}"
        )
    names = KITTI_FIELDS + (("score",) if len(tokens) == 18 else ())
    values = {}
    for name, tok in zip(names, tokens):
        try:
            if name == "type":
                values[name] = tok
            elif name in _INT_FIELDS:
                values[name] = int(tok)
            else:
                values[name] = float(tok)
        except ValueError:
            kind = "an integer" if name in _INT_FIELDS else "a number"
            raise InputError(f"{where}:{line}: field '{name}' = {tok!r} is not {kind}") from None
    if values["frame"] < 0:
        raise InputError(f"{where}:{line}: negative frame {values['frame']}")
    return KittiLabel(**values, line=line)


def read_label_file(path: str | Path) -> list[KittiLabel]:
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"KITTI label file not found: {path}")
    with open(path) as f:
        return [parse_label_line(text, str(path), n) for n, text in enumerate(f, start=1) if text.strip()]


@dataclass
class KittiScene:
    name: str
    image_dir: Path
    num_frames: int
    hw: tuple[int, int]
    # frame -> (boxes [n,4] source pixels, coco ids [n], track ids [n]); frames without objects absent
    objects: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def scene_frames(image_dir: Path) -> int:
    """Number of frames of a scene folder, checking they are 000000.png .. N-1 without gaps."""
    if not image_dir.is_dir():
        raise MissingFile(f"KITTI image folder not found: {image_dir} (check data.root)")
    ids = []
    for p in data_entries(image_dir, dirs=False):
        if p.suffix.lower() == ".png":
            if not p.stem.isdigit():
                raise InputError(f"{p}: KITTI frames are named NNNNNN.png")
            ids.append(int(p.stem))
    if not ids:
        raise InputError(f"{image_dir}: no .png frames")
    missing = sorted(set(range(max(ids) + 1)) - set(ids))
    if missing:
        raise MissingFile(
            f"missing frame {image_dir / f'{missing[0]:06d}.png'} ({len(missing)} missing in 0..{max(ids)})"
        )
    return max(ids) + 1


def load_scene(
    root: Path, split_dir: str, scene: str, classes: Mapping[str, int], ignore_types: set[str]
) -> KittiScene:
    image_dir = root / split_dir / "image_02" / scene
    label_file = root / split_dir / "label_02" / f"{scene}.txt"
    n = scene_frames(image_dir)
    with Image.open(image_dir / "000000.png") as im:
        w, h = im.size
    per_frame: dict[int, list[tuple]] = {}
    for lab in read_label_file(label_file):
        if lab.frame >= n:
            raise InputError(
                f"{label_file}:{lab.line}: label for frame {lab.frame}, but {image_dir} has frames 0..{n - 1}"
            )
        if lab.type in ignore_types:
            continue
        if lab.type not in classes:
            raise InputError(
                f"{label_file}:{lab.line}: type {lab.type!r} is neither in data.classes "
                f"{sorted(classes)} nor in data.ignore_types {sorted(ignore_types)}"
            )
        per_frame.setdefault(lab.frame, []).append((lab.bbox, classes[lab.type], lab.track_id))
    objects = {
        f: (
            np.stack([o[0] for o in objs]),
            np.array([o[1] for o in objs], np.int64),
            np.array([o[2] for o in objs], np.int64),
        )
        for f, objs in per_frame.items()
    }
    return KittiScene(scene, image_dir, n, (h, w), objects)


def scene_names(names) -> list[str]:
    """Scene names as 4-digit strings (YAML may turn an unquoted 0019 into the int 19)."""
    return [f"{int(s):04d}" if isinstance(s, int) or str(s).isdigit() else str(s) for s in names]


class KittiTracking(ClipDataset):
    """Clips of `clip_len` frames (every `stride`-th) from the scenes of `data.<split>.scenes`."""

    name = "kitti"

    def __init__(self, cfg, split: str):
        super().__init__(cfg, split)
        root = require_root(cfg)
        classes = {str(k): int(v) for k, v in cfg.classes.items()}
        ignore = set(cfg.get("ignore_types", ["DontCare"]))
        split_dir = str(cfg.get("split_dir", "training"))
        self._fps = float(cfg.fps) / self.stride
        self.scenes = {s: load_scene(root, split_dir, s, classes, ignore) for s in scene_names(cfg[split].scenes)}
        sequences = {s: list(range(sc.num_frames)) for s, sc in self.scenes.items()}
        self._setup(cfg, sequences, cache_key={"root": str(root.resolve()), "split_dir": split_dir})

    def fps(self, scene: str) -> float:
        return self._fps

    def source_hw(self, scene: str) -> tuple[int, int]:
        return self.scenes[scene].hw

    def source_annotations(self, scene: str, frame_id: int):
        empty = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return self.scenes[scene].objects.get(frame_id, empty)

    def decode(self, scene: str, frame_ids: list[int]) -> Iterator[tuple[int, Image.Image]]:
        sc = self.scenes[scene]
        for f in frame_ids:
            path = sc.image_dir / f"{f:06d}.png"
            if not path.is_file():
                raise MissingFile(f"missing frame {path}")
            img = Image.open(path).convert("RGB")
            if (img.height, img.width) != sc.hw:
                # boxes are rescaled with the scene's size; a frame of another size would misplace them
                raise InputError(f"{path}: {img.height}x{img.width}, but the scene's frame 0 is {sc.hw[0]}x{sc.hw[1]}")
            yield f, img

    def extra_meta(self, ref: ClipRef) -> dict:
        return {"stride": self.stride}
