"""Reading and writing videos as uint8 [T,H,W,3] RGB arrays: mp4 files or folders of frames."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from data.atomic import atomic_dir, atomic_path, data_entries
from data.cli import InputError, MissingFile

log = logging.getLogger(__name__)

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def is_video(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in FRAME_SUFFIXES for p in data_entries(path, dirs=False))
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_frame(path: str | Path) -> np.ndarray:
    """One frame image as uint8 [H,W,3] RGB, decoded by the PIL plugin of its suffix.

    Not through PIL.Image.open: other libraries patch it (ultralytics makes an unidentifiable file
    look for a HEIF plugin and fail with ModuleNotFoundError pi_heif). An empty, damaged or
    mislabelled file is an InputError naming it."""
    from PIL import JpegImagePlugin, PngImagePlugin

    path = Path(path)
    opener = {
        ".png": PngImagePlugin.PngImageFile,
        ".jpg": JpegImagePlugin.JpegImageFile,
        ".jpeg": JpegImagePlugin.JpegImageFile,
    }.get(path.suffix.lower())
    if opener is None:
        raise InputError(f"{path}: not a frame image (valid suffixes: {', '.join(FRAME_SUFFIXES)})")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty frame image (0 bytes; a write that did not finish?)")
    try:
        with opener(str(path)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "damaged" or "not this format"
        raise InputError(f"{path}: damaged or not a {path.suffix[1:].upper()} image ({size} bytes; {e})") from e


# A container's frame count is compared with the frames decoded (a truncated mp4 whose header
# survived decodes as a shorter video, silently). Without PyAV the count is duration x fps from
# ffmpeg's header: the duration is printed to 10 ms, an audio track may outlast the video by a few
# frames, and a variable-frame-rate file only has a nominal fps; hence a tolerance of a few frames
# or a few percent, whichever is larger. A cut of more than that is reported.
FRAME_COUNT_TOLERANCE = (3, 0.05)


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """An mp4 (or other ffmpeg-readable file) or a folder of frame images, sorted by name.

    Damaged input is an InputError naming the file: an unreadable frame image, a video that decodes
    to fewer frames than its container declares (truncated), or one that cannot be decoded."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"video not found: {path}")
    if path.is_dir():
        files = [p for p in data_entries(path, dirs=False) if p.suffix.lower() in FRAME_SUFFIXES]
        if not files:
            raise InputError(f"{path}: folder holds no {'/'.join(FRAME_SUFFIXES)} frames")
        files = files[:max_frames] if max_frames else files
        frames = [read_frame(p) for p in files]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise InputError(f"{path}: frames differ in size: {sorted(shapes)}")
        return np.stack(frames)
    try:
        import imageio.v3 as iio

        frames = []
        for k, frame in enumerate(iio.imiter(path, plugin="pyav" if _has_pyav() else "FFMPEG")):
            if max_frames and k >= max_frames:
                break
            frames.append(np.asarray(frame)[..., :3])
        declared = None if max_frames and len(frames) >= max_frames else container_frames(path)
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: unreadable video ({e})") from e
    if not frames:
        raise InputError(f"{path}: no frames could be decoded")
    if declared is not None:
        count, how = declared
        slack = max(FRAME_COUNT_TOLERANCE[0], FRAME_COUNT_TOLERANCE[1] * count)
        if len(frames) < count - slack:
            raise InputError(
                f"{path}: truncated or damaged video: {len(frames)} frames decoded, but the file "
                f"declares {count:.0f} ({how}); replace or re-encode it"
            )
    return np.stack(frames).astype(np.uint8)


def container_frames(path: Path) -> tuple[float, str] | None:
    """(frame count the container declares, how it was found), or None when it does not say."""
    if _has_pyav():
        import av

        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if s.frames:
                return float(s.frames), "its frame count"
            if s.duration and s.average_rate:
                return float(s.duration * s.time_base * s.average_rate), "duration x frame rate"
        return None
    import imageio.v3 as iio

    meta = iio.immeta(path, plugin="FFMPEG")
    n, duration, fps = meta.get("nframes"), meta.get("duration"), meta.get("fps")
    if isinstance(n, (int, float)) and np.isfinite(n) and n > 0:
        return float(n), "its frame count"
    if duration and fps and np.isfinite(duration) and np.isfinite(fps):
        return float(duration) * float(fps), f"{duration} s x {fps} fps"
    return None


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401

        return True
    except ImportError:
        return False


def write_video(path: str | Path, frames: np.ndarray, fps: float = 7.0, quality: float = 8) -> Path:
    """Write an mp4 (H.264, yuv420p: what browsers play) atomically: a reader never sees a half-written
    file. `quality`: imageio's 0-10 scale (10 = the largest files)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    with atomic_path(path) as tmp:
        # macro_block_size=1 keeps odd sizes (e.g. 320x512 is fine, tiny smoke sizes too)
        with imageio.get_writer(
            str(tmp),
            fps=fps,
            codec="libx264",
            quality=quality,
            macro_block_size=1,
            ffmpeg_log_level="error",
            pixelformat="yuv420p",
        ) as w:
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


def video_problem(path: str | Path, num_frames: int | None = None) -> str | None:
    """Why a written video (an mp4, or a folder of frames) cannot be kept, or None when it decodes
    whole with `num_frames` frames (any count when None). What a resumed writer checks before it
    keeps an output of an earlier attempt (benchmark/generate.py): a truncated, emptied or deleted
    frame, a cut mp4 are redone instead of trusted."""
    path = Path(path)
    if not path.exists():
        return f"{path}: missing"
    try:
        n = read_video(path).shape[0]
    except (InputError, MissingFile) as e:
        return str(e)
    if num_frames is not None and n != int(num_frames):
        return f"{path}: {n} frames, expected {int(num_frames)}"
    return None


def kept_video(frames: str | Path | None, mp4: str | Path | None = None, num_frames: int | None = None) -> bool:
    """Whether a video an earlier attempt wrote can be kept by a resumed writer (benchmark/generate.py,
    the Ctrl-V pipeline): its frame folder and its mp4, each when given, decode whole with `num_frames`
    frames (None: the folder any count, the mp4 as many as the folder). A damaged or missing one is
    logged and made again, never sealed into a stage's manifest (benchmark/manifest.py)."""
    for path, is_mp4 in ((frames, False), (mp4, True)):
        if path is None:
            continue
        n = num_frames
        if is_mp4 and n is None and frames is not None:  # the folder decoded above
            n = len(data_entries(frames, dirs=False))
        problem = video_problem(path, n)
        if problem is not None:
            log.warning("an output of an earlier attempt is damaged or missing, generating it again: %s", problem)
            return False
    return True
