"""Cutting scenes into clips: `clip_len` frames taken every `stride` frames of a scene's sequence.

A scene's *sequence* is the ordered list of frame ids the clips may use (KITTI: 0..N-1; nuScenes:
indices of the CAM_FRONT sample_data chain, possibly resampled to a target fps). Training windows
start every `window_step` positions and may overlap; test windows are disjoint (step = span).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from data.cli import InputError


@dataclass(frozen=True)
class ClipRef:
    """Where a clip comes from: a scene and the frame ids (in the scene's own numbering)."""

    scene: str
    frame_ids: tuple[int, ...]

    @property
    def first_frame(self) -> int:
        return self.frame_ids[0]


def clip_span(clip_len: int, stride: int) -> int:
    """Positions of a sequence one clip covers, first to last frame inclusive."""
    if clip_len < 1 or stride < 1:
        raise InputError(f"data.clip_len ({clip_len}) and data.stride ({stride}) must be >= 1")
    return (clip_len - 1) * stride + 1


def windows(sequence: Sequence[int], clip_len: int, stride: int, step: int) -> list[tuple[int, ...]]:
    if step < 1:
        raise ValueError(f"window step must be >= 1, got {step}")
    span = clip_span(clip_len, stride)
    seq = list(sequence)
    return [tuple(seq[s : s + span : stride]) for s in range(0, len(seq) - span + 1, step)]


def train_refs(sequences: Mapping[str, Sequence[int]], clip_len: int, stride: int, window_step: int) -> list[ClipRef]:
    """Every window of every scene, starting each `window_step` positions (overlap allowed)."""
    return [
        ClipRef(scene, ids) for scene, seq in sequences.items() for ids in windows(seq, clip_len, stride, window_step)
    ]


def disjoint_refs(sequences: Mapping[str, Sequence[int]], clip_len: int, stride: int) -> list[ClipRef]:
    """Non-overlapping windows of every scene, in scene order then time order."""
    span = clip_span(clip_len, stride)
    return [ClipRef(scene, ids) for scene, seq in sequences.items() for ids in windows(seq, clip_len, stride, span)]
