"""The detector interface every backend implements (DESIGN.md "Interfaces worth keeping small")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from data.cli import InputError


@dataclass
class Detections:
    """Detections of one frame, in pixels of the frame the detector was given.

    boxes:  float32 [n, 4] xyxy
    scores: float32 [n] confidences in [0, 1]
    labels: int64 [n] class ids in the 80-class contiguous COCO numbering (car 2, truck 7, ...)
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(
                f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])

    @property
    def widths(self) -> np.ndarray:
        return self.boxes[:, 2] - self.boxes[:, 0]

    @property
    def heights(self) -> np.ndarray:
        return self.boxes[:, 3] - self.boxes[:, 1]


@runtime_checkable
class Detector(Protocol):
    """`detect(frames uint8 [N,H,W,3] RGB) -> one Detections per frame`, COCO-80 labels."""

    name: str

    def detect(self, frames: np.ndarray) -> list[Detections]: ...


def check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"detector input must be uint8 [N,H,W,3] RGB, got {frames.dtype} {frames.shape}")
    return frames


class FakeDetector:
    """A detector whose output is scripted: `fn(frame uint8 [H,W,3]) -> Detections`.

    Tests use it to check the metric maths exactly (e.g. frames that carry their own index in a
    pixel, and a table of boxes per index). `FakeDetector.constant(boxes, scores, labels)` returns
    the same detections on every frame.
    """

    name = "fake"

    def __init__(self, fn: Callable[[np.ndarray], Detections]):
        self.fn = fn
        self.calls = 0  # number of frames seen, for tests of batching

    def detect(self, frames: np.ndarray) -> list[Detections]:
        frames = check_frames(frames)
        self.calls += len(frames)
        return [self.fn(frame) for frame in frames]

    @classmethod
    def constant(cls, boxes: Sequence, scores: Sequence, labels: Sequence) -> FakeDetector:
        det = Detections(np.asarray(boxes, np.float32), np.asarray(scores), np.asarray(labels))
        return cls(lambda frame: det)


COCO_NUM_CLASSES = 80
# resampling filters by config name (det.detector.interp), for the backends that resize with PIL
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class OutputFilter:
    """The filters every backend applies last (same semantics as the YOLO backend's settings)."""

    def __init__(self, min_conf: float, max_det: int, classes, label_map, num_classes: int, where: str):
        self.min_conf, self.max_det = float(min_conf), int(max_det)
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        if not self.label_map and num_classes != COCO_NUM_CLASSES:
            raise InputError(
                f"{where}: the model has {num_classes} classes, not the 80 COCO classes; "
                f"set det.detector.label_map to map its ids to COCO ids"
            )
        self.classes = None if classes is None else np.array(sorted({int(c) for c in classes}), np.int64)

    def __call__(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
        labels = labels.astype(np.int64)
        keep = scores >= self.min_conf
        if self.label_map:
            keep &= np.isin(labels, list(self.label_map))
            labels = np.array([self.label_map.get(int(c), -1) for c in labels], np.int64)
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        det = Detections(boxes[keep], scores[keep], labels[keep])
        order = np.argsort(-det.scores, kind="stable")[: self.max_det]  # already sorted; stays stable
        return det.select(order)
