"""Plain resize (no crop) of frames and the matching rescale of their boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image

from data.cli import InputError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "area": Image.Resampling.BOX,
}


def resample_filter(name: str) -> Image.Resampling:
    if name not in _RESAMPLE:
        raise InputError(f"data.interpolation={name!r} is unknown; valid: {sorted(_RESAMPLE)}")
    return _RESAMPLE[name]


def resize_frame(
    frame: np.ndarray | Image.Image, height: int, width: int, interpolation: str = "bilinear"
) -> np.ndarray:
    """uint8 [H0,W0,3] (or a PIL image) -> uint8 [height,width,3].

    PIL's filters widen their support when downsampling (anti-aliased), which matters for
    1242 -> 512 (KITTI) and 1600 -> 512 (nuScenes) wide frames.
    """
    img = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, np.uint8))
    img = img.convert("RGB")
    if img.size != (width, height):
        img = img.resize((width, height), resample_filter(interpolation))
    return np.asarray(img, dtype=np.uint8)


def rescale_boxes(
    boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int], min_size: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scale xyxy boxes from a src_hw image to dst_hw, clip them to the image, and flag the
    ones that became degenerate (narrower or shorter than `min_size` pixels).

    Returns (boxes float32 [n,4] in dst pixels, keep bool [n]); callers drop ~keep and count them.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    (h0, w0), (h1, w1) = src_hw, dst_hw
    scale = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0])
    out = boxes * scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h1)
    keep = ((out[:, 2] - out[:, 0]) >= min_size) & ((out[:, 3] - out[:, 1]) >= min_size)
    return out.astype(np.float32), keep
