"""Reading and writing videos as uint8 [T,H,W,3] RGB arrays: mp4 files or folders of frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import atomic_dir, atomic_path, data_entries

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def is_video(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in FRAME_SUFFIXES for p in data_entries(path, dirs=False))
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """An mp4 (or other ffmpeg-readable file) or a folder of frame images, sorted by name."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        if path.is_dir():
            files = [p for p in data_entries(path, dirs=False) if p.suffix.lower() in FRAME_SUFFIXES]
            if not files:
                raise ValueError(f"{path}: folder holds no {'/'.join(FRAME_SUFFIXES)} frames")
            files = files[:max_frames] if max_frames else files
            frames = [np.asarray(Image.open(p).convert("RGB")) for p in files]
            shapes = {f.shape for f in frames}
            if len(shapes) > 1:
                raise ValueError(f"{path}: frames differ in size: {sorted(shapes)}")
            return np.stack(frames)
        import imageio.v3 as iio
        frames = []
        for k, frame in enumerate(iio.imiter(path, plugin="pyav" if _has_pyav() else "FFMPEG")):
            if max_frames and k >= max_frames:
                break
            frames.append(np.asarray(frame)[..., :3])
        if not frames:
            raise ValueError(f"{path}: no frames could be decoded")
        return np.stack(frames).astype(np.uint8)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path}: unreadable video ({e})") from e


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
        return True
    except ImportError:
        return False


def write_video(path: str | Path, frames: np.ndarray, fps: float = 7.0) -> Path:
    """Write an mp4 (H.264, yuv420p) atomically: a reader never sees a half-written file."""
    import imageio.v2 as imageio
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    with atomic_path(path) as tmp:
        # macro_block_size=1 keeps odd sizes (e.g. 320x512 is fine, tiny smoke sizes too)
        with imageio.get_writer(str(tmp), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error", pixelformat="yuv420p") as w:
            for frame in frames:
                w.append_data(frame)
    return path


def write_frames(folder: str | Path, frames: np.ndarray) -> Path:
    """Write frames as 000000.png, 000001.png, ... into `folder`, atomically (temp folder + rename)."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for j, frame in enumerate(np.asarray(frames, dtype=np.uint8)):
            Image.fromarray(frame).save(tmp / f"{j:06d}.png")
    return folder
