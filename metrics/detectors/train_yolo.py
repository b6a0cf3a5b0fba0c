"""Train YOLO11 on clips with exact boxes, through ultralytics' own trainer (the mini profile's detector).

The clips' frames are written once as a YOLO dataset (PNG images, one label file per frame with
`class cx cy w h` normalised, a data.yaml with the 80 COCO names so the trained model labels in the
COCO numbering the suite uses), then `YOLO(<arch>.yaml).train(...)` trains from scratch, offline
(metrics/detectors/yolo.py sets YOLO_OFFLINE, YOLO_AUTOINSTALL and YOLO_CONFIG_DIR before
ultralytics is imported), without plots (they would fetch a font). The best checkpoint is copied to
`out` atomically; `metrics.detectors.yolo.YOLODetector` loads it like any YOLO11 checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

import metrics.detectors.yolo  # noqa: F401  (offline environment before ultralytics is imported)
from data.atomic import atomic_path
from data.clip import Clip
from data.coco import COCO_NAMES
from data.device import keeps_torch_threads


def write_yolo_dataset(splits: dict[str, Sequence[Clip]], folder: str | Path) -> Path:
    """{split: clips} -> `folder/images/<split>/*.png`, `folder/labels/<split>/*.txt`, `folder/data.yaml`."""
    folder = Path(folder)
    for split, clips in splits.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for c, clip in enumerate(clips):
            H, W = clip.hw
            for j, frame in enumerate(clip.frames):
                stem = f"c{c:05d}_f{j:03d}"
                Image.fromarray(frame).save(folder / "images" / split / f"{stem}.png")
                lines = []
                for (x1, y1, x2, y2), label in zip(clip.boxes[j], clip.labels[j]):
                    cx, cy, w, h = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
                    lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
                (folder / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(COCO_NAMES))
    val = "val" if "val" in splits else next(iter(splits))
    (folder / "data.yaml").write_text(
        f"path: {folder.resolve()}\ntrain: images/{next(iter(splits))}\nval: images/{val}\nnames:\n{names}\n"
    )
    return folder / "data.yaml"


def train_yolo(
    out: str | Path,
    train_clips: Sequence[Clip],
    val_clips: Sequence[Clip],
    *,
    work_dir: str | Path,
    arch: str = "yolo11n.yaml",
    epochs: int = 10,
    imgsz: int = 96,
    batch: int = 16,
    seed: int = 0,
    optimizer: str = "AdamW",
    lr0: float = 0.002,
    warmup_epochs: float = 1.0,
    workers: int = 0,
    mosaic: float = 1.0,
    close_mosaic: int = 2,
    extra: dict | None = None,
) -> Path:
    """Train `arch` from scratch on the clips' frames and boxes; save the last weights at `out` (.pt).

    `val_clips` are the validation frames ultralytics reports on while training; they must not be
    the test clips (nothing is tuned on those). `extra` passes further trainer arguments.
    The optimizer is explicit: ultralytics' `auto` picks AdamW at lr 0.002 * 5 / (4 + nc), which for
    the 80 COCO classes is 1.2e-4, too slow for a few epochs from scratch."""
    from ultralytics import YOLO

    out, work_dir = Path(out), Path(work_dir)
    data_yaml = write_yolo_dataset({"train": train_clips, "val": val_clips}, work_dir / "dataset")
    model = YOLO(arch, task="detect")
    with keeps_torch_threads():  # ultralytics sets the process thread count to its own
        model.train(
            data=str(data_yaml),
            epochs=int(epochs),
            imgsz=int(imgsz),
            batch=int(batch),
            seed=int(seed),
            optimizer=optimizer,
            lr0=float(lr0),
            warmup_epochs=float(warmup_epochs),
            workers=int(workers),
            mosaic=float(mosaic),
            close_mosaic=int(close_mosaic),
            device="cpu",
            project=str(work_dir),
            name="train",
            exist_ok=True,
            plots=False,
            amp=False,
            deterministic=True,
            verbose=False,
            pretrained=False,
            **({"val": True} | (extra or {})),
        )
    weights = Path(model.trainer.last)
    if not weights.is_file():
        raise RuntimeError(f"ultralytics wrote no weights under {work_dir}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        shutil.copyfile(weights, tmp)
    return out


def frames_and_boxes(clips: Sequence[Clip]):
    """All frames of the clips [N,H,W,3] and their reference boxes as `Detections` (score 1)."""
    from metrics.detectors.base import Detections

    frames = np.concatenate([c.frames for c in clips])
    refs = [Detections(b, np.ones(len(b)), lab) for c in clips for b, lab in zip(c.boxes, c.labels)]
    return frames, refs
