"""Preprocessing cache: every frame is decoded and resized once, then read back as a uint8 array.

Layout: `<cache.dir>/<prefix>-<hash>/<scene>/<frame id>.npy`, where <hash> is a hash of the
preprocessing config (dataset, root, size, interpolation, ...; `key.json` beside the frames says
which). A changed config hashes to a new folder, so the cache is rebuilt instead of served stale.

Frames, not clips, are the unit: training windows overlap (window_step 1 puts each frame in up to
clip_len windows), so caching whole clips would store every frame clip_len times. Uncompressed
.npy keeps a cached read a plain file read (no zlib per epoch). Writes are atomic (temp + rename),
so DataLoader workers racing on the same frame at worst decode it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from data.atomic import atomic_path, atomic_write_json

# Where decoded frames, test-clip lists and pseudo-boxes are cached when `data.cache.dir` is null
# (the one place this path is written; configs/data/*.yaml leave it null).
DEFAULT_CACHE_DIR = ".cache/lsa_data"

CACHE_FORMAT = 1  # bump when the on-disk layout changes


def bench_cache_root() -> Path:
    """The suite's own cache (tiny networks, detector folders, the sha256 cache of inputs):
    $LSA_BENCH_CACHE, else $XDG_CACHE_HOME/lsa-bench, else ~/.cache/lsa-bench."""
    base = os.environ.get("LSA_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lsa-bench"
    )
    return Path(base)


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(obj) -> str:
    """A stable hex digest of a JSON-able object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def atomic_save_npy(path: Path, arr: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return Path(path)


def atomic_save_npz(path: Path, **arrays) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


class FrameCache:
    """Decoded, resized frames keyed by (scene, frame id) under a folder named by the config hash.

    `dir=None` disables caching (every read decodes).
    """

    def __init__(self, dir: str | Path | None, key: Mapping, prefix: str = "frames"):
        self.key = {"cache_format": CACHE_FORMAT, **dict(key)}
        self.hash = config_hash(self.key)[:16]
        self.dir = None if dir is None else Path(dir) / f"{prefix}-{self.hash}"
        self._key_written = False

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def path(self, scene: str, frame_id: int) -> Path:
        return self.dir / str(scene) / f"{int(frame_id):06d}.npy"

    def get(self, scene: str, frame_id: int, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        if not self.enabled:
            return None
        p = self.path(scene, frame_id)
        try:
            arr = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError):
            return None  # unreadable (e.g. a disk filled up mid-copy): rebuild it
        if arr.dtype != np.uint8 or (shape is not None and arr.shape != tuple(shape)):
            return None
        return arr

    def put(self, scene: str, frame_id: int, frame: np.ndarray) -> None:
        if not self.enabled:
            return
        if not self._key_written:
            # says what the hash stands for, so a user can tell cache folders apart
            if not (self.dir / "key.json").exists():
                atomic_write_json(self.dir / "key.json", self.key, sort_keys=False)
            self._key_written = True
        atomic_save_npy(self.path(scene, frame_id), np.ascontiguousarray(frame, dtype=np.uint8))

    def frames(
        self,
        scene: str,
        frame_ids: Iterable[int],
        shape: tuple[int, int, int],
        decode: Callable[[list[int]], Iterable[tuple[int, np.ndarray]]],
    ) -> np.ndarray:
        """uint8 [T,*shape] for `frame_ids`. `decode(missing ids)` yields (id, resized frame) pairs;
        it may yield more ids than asked (a video decoded from its start): those are cached too,
        one at a time, so a long video never has to fit in memory."""
        frame_ids = [int(f) for f in frame_ids]
        found = {f: self.get(scene, f, shape) for f in frame_ids}
        missing = sorted({f for f, a in found.items() if a is None})
        if missing:
            for f, arr in decode(missing):
                self.put(scene, int(f), arr)
                if int(f) in found:
                    found[int(f)] = arr
            still = [f for f in missing if found[f] is None]
            if still:
                raise RuntimeError(f"scene {scene}: the decoder returned no frame for ids {still[:5]}")
        return np.stack([found[f] for f in frame_ids])
