"""The one data type every dataset produces and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Clip:
    """A short video with per-frame 2D boxes of dynamic objects.

    frames:    uint8 [T, H, W, 3], RGB.
    boxes:     per frame, float32 [n_j, 4] xyxy in pixels of `frames`.
    labels:    per frame, int64 [n_j] class ids in the 80-class contiguous COCO numbering
               (car 2, truck 7, person 0, ...), the numbering the detectors use.
    track_ids: per frame, int64 [n_j] object identities (-1 when unknown).
    meta:      free-form provenance (dataset, scene, frame ids, fps, ...).
    """

    frames: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    track_ids: list[np.ndarray] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"Clip.frames must be uint8 [T,H,W,3], got {self.frames.dtype} {self.frames.shape}")
        T = self.frames.shape[0]
        if self.track_ids is None:
            self.track_ids = [np.full(len(b), -1, dtype=np.int64) for b in self.boxes]
        for name in ("boxes", "labels", "track_ids"):
            per_frame = getattr(self, name)
            if len(per_frame) != T:
                raise ValueError(f"Clip.{name} has {len(per_frame)} entries for {T} frames")
        self.boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in self.boxes]
        self.labels = [np.asarray(x, dtype=np.int64).reshape(-1) for x in self.labels]
        self.track_ids = [np.asarray(x, dtype=np.int64).reshape(-1) for x in self.track_ids]
        for j, (b, lab, tid) in enumerate(zip(self.boxes, self.labels, self.track_ids)):
            if not len(b) == len(lab) == len(tid):
                raise ValueError(f"Clip frame {j}: {len(b)} boxes, {len(lab)} labels, {len(tid)} track ids")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def read_box_record(path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict]:
    """(boxes, labels, track_ids, meta) per frame from a `{"frames": [{"boxes", "labels", "track_ids"},
    ...], "meta": {...}}` file, the layout of the benchmark's testset stage (boxes/<clip>.json)."""
    import json
    from pathlib import Path

    from data.cli import InputError

    try:
        record = json.loads(Path(path).read_text())
        frames = record["frames"]
        return (
            [np.asarray(f["boxes"], np.float32).reshape(-1, 4) for f in frames],
            [np.asarray(f["labels"], np.int64) for f in frames],
            [np.asarray(f["track_ids"], np.int64) for f in frames],
            record.get("meta") or {},
        )
    except (OSError, KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: expected {{'frames': [{{'boxes', 'labels', 'track_ids'}}, ...]}}: {e}") from e
