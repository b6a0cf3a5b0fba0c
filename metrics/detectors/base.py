"""The detector interface every backend implements (DESIGN.md "Interfaces worth keeping small")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np


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
            raise ValueError(f"Detections: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                             f"{len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    def select(self, keep: np.ndarray) -> "Detections":
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
        self.calls = 0          # number of frames seen, for tests of batching

    def detect(self, frames: np.ndarray) -> list[Detections]:
        frames = check_frames(frames)
        self.calls += len(frames)
        return [self.fn(frame) for frame in frames]

    @classmethod
    def constant(cls, boxes: Sequence, scores: Sequence, labels: Sequence) -> "FakeDetector":
        det = Detections(np.asarray(boxes, np.float32), np.asarray(scores), np.asarray(labels))
        return cls(lambda frame: det)
