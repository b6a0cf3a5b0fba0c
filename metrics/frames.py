"""Frame resizing shared by FID, FVD and the detectors.

The paper (following Ctrl-V) resizes frames to 256x410 before FVD and FID. Ctrl-V does it with
PIL's `Image.resize`, whose default filter for RGB images is bicubic, so PIL is used here too
(it also has a proper antialiasing filter when shrinking, which plain `F.interpolate` lacks).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def resize_frames(frames: np.ndarray, size, method: str = "bicubic") -> np.ndarray:
    """uint8 [T,H,W,3] -> uint8 [T,h,w,3] with (h, w) = size; size None keeps the frames as they are."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    if size is None:
        return frames
    h, w = int(size[0]), int(size[1])
    if frames.shape[1:3] == (h, w):
        return frames
    if method not in _PIL_FILTERS:
        raise ValueError(f"resize method {method!r} is unknown; valid: {sorted(_PIL_FILTERS)}")
    out = np.empty((frames.shape[0], h, w, 3), np.uint8)
    for j, frame in enumerate(frames):
        out[j] = np.asarray(Image.fromarray(frame).resize((w, h), resample=_PIL_FILTERS[method]))
    return out
