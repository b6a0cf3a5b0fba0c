"""What every real-data loader shares: splits into clips, the frame cache, plain resize with box
rescaling, and assembling `Clip`s. A loader implements four small hooks (see `ClipDataset`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from data.cache import DEFAULT_CACHE_DIR, FrameCache
from data.cli import InputError, MissingFile
from data.clip import Clip
from data.sampling import ClipRef, train_refs
from data.test_split import load_or_create_test_clips
from data.transforms import resample_filter, rescale_boxes, resize_frame


def require_root(cfg) -> Path:
    root = cfg.get("root")
    if not root:
        raise InputError(
            f"data.root is not set: point it at the {cfg.name} dataset folder "
            "(see docs/data.md), e.g. data.root=/data/kitti_tracking"
        )
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise MissingFile(f"data.root={root} does not exist or is not a folder")
    return root


class ClipDataset(Sequence[Clip]):
    """A sequence of `Clip`s cut from scenes.

    Subclasses call `_setup(cfg, sequences, cache_key)` once they know each scene's frame ids, and
    implement:
      source_hw(scene) -> (H0, W0)                    size the frames and source boxes have
      source_annotations(scene, frame_id) -> (boxes [n,4] xyxy in source pixels, coco ids [n], track ids [n])
      decode(scene, frame_ids) -> iterable of (frame_id, uint8 [H0,W0,3] or PIL image)
      fps(scene) -> float                              rate of the clip frames (after stride/resampling)
    """

    name = "base"

    def __init__(self, cfg, split: str):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.split = split
        self.height, self.width = int(cfg.height), int(cfg.width)
        self.clip_len, self.stride = int(cfg.clip_len), int(cfg.get("stride", 1))
        self.interpolation = str(cfg.get("interpolation", "bilinear"))
        resample_filter(self.interpolation)  # fail at construction, not in a worker
        self.min_box_size = float(cfg.get("min_box_size", 1.0))
        self.refs: list[ClipRef] = []
        self.test_clips_file: Path | None = None
        self.cache = FrameCache(None, {})

    # ---- hooks -------------------------------------------------------------------------------
    def source_hw(self, scene: str) -> tuple[int, int]:
        raise NotImplementedError

    def source_annotations(self, scene: str, frame_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decode(self, scene: str, frame_ids: list[int]) -> Iterable[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def fps(self, scene: str) -> float:
        raise NotImplementedError

    def extra_meta(self, ref: ClipRef) -> dict:
        return {}

    # ---- setup -------------------------------------------------------------------------------
    def _setup(
        self, cfg, sequences: Mapping[str, Sequence[int]], cache_key: Mapping, test_params: Mapping | None = None
    ) -> None:
        cache_cfg = cfg.get("cache") or {}
        cache_dir = str(cache_cfg.get("dir") or DEFAULT_CACHE_DIR)
        key = {
            "dataset": self.name,
            "height": self.height,
            "width": self.width,
            "interpolation": self.interpolation,
            **dict(cache_key),
        }
        self.cache = FrameCache(cache_dir if cache_cfg.get("enabled", True) else None, key, prefix=self.name)
        if self.split == "train":
            step = int(cfg.train.get("window_step", 1)) if cfg.get("train") else 1
            self.refs = train_refs(sequences, self.clip_len, self.stride, step)
        else:
            t = cfg.get("test") or {}
            self.refs, self.test_clips_file = load_or_create_test_clips(
                self.name,
                sequences,
                self.clip_len,
                self.stride,
                int(t.get("num_clips", 200)),
                t.get("clips_file"),
                cache_dir,
                test_params,
                root=cfg.get("root"),
                window_step=t.get("window_step"),
                select=str(t.get("select") or "even"),
            )

    # ---- Sequence[Clip] ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.refs)

    def _ref(self, i: int) -> ClipRef:
        if not -len(self.refs) <= i < len(self.refs):
            raise IndexError(f"clip {i} of {len(self.refs)}")
        return self.refs[i]

    def __getitem__(self, i: int) -> Clip:
        ref = self._ref(i)
        frames = self.cache.frames(
            ref.scene, ref.frame_ids, (self.height, self.width, 3), lambda ids: self._decode_resized(ref.scene, ids)
        )
        boxes, labels, tracks, dropped = self._annotations(ref)
        meta = {
            "dataset": self.name,
            "split": self.split,
            "scene": ref.scene,
            "first_frame": ref.first_frame,
            "frame_ids": list(ref.frame_ids),
            "fps": self.fps(ref.scene),
            "source_hw": list(self.source_hw(ref.scene)),
            "boxes_source": "labels",
            "dropped_boxes": dropped,
            **self.extra_meta(ref),
        }
        return Clip(frames=frames, boxes=boxes, labels=labels, track_ids=tracks, meta=meta)

    def annotations(self, i: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """The clip's boxes (in the resized frames), labels and number of dropped degenerate
        boxes, without decoding any frame (for summaries)."""
        boxes, labels, _, dropped = self._annotations(self._ref(i))
        return boxes, labels, dropped

    def _annotations(self, ref: ClipRef):
        src_hw, dst_hw = self.source_hw(ref.scene), (self.height, self.width)
        boxes, labels, tracks, dropped = [], [], [], 0
        for f in ref.frame_ids:
            b, lab, tid = self.source_annotations(ref.scene, f)
            b, keep = rescale_boxes(b, src_hw, dst_hw, self.min_box_size)
            dropped += int((~keep).sum())
            boxes.append(b[keep])
            labels.append(np.asarray(lab, np.int64)[keep])
            tracks.append(np.asarray(tid, np.int64)[keep])
        return boxes, labels, tracks, dropped

    def _decode_resized(self, scene: str, frame_ids: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for f, img in self.decode(scene, frame_ids):
            yield f, resize_frame(img, self.height, self.width, self.interpolation)

    def prepare(self, progress: bool = True, chunk: int = 64) -> int:
        """Fill the frame cache for every clip up front (e.g. before multi-worker training).
        Returns the number of distinct frames."""
        from tqdm import tqdm

        per_scene: dict[str, set[int]] = defaultdict(set)
        for ref in self.refs:
            per_scene[ref.scene].update(ref.frame_ids)
        total = sum(len(v) for v in per_scene.values())
        with tqdm(total=total, desc=f"cache {self.name}/{self.split}", disable=not progress, unit="frame") as bar:
            for scene, ids in per_scene.items():
                ids = sorted(ids)
                for k in range(0, len(ids), chunk):
                    part = ids[k : k + chunk]
                    self.cache.frames(
                        scene,
                        part,
                        (self.height, self.width, 3),
                        lambda missing, s=scene: self._decode_resized(s, missing),
                    )
                    bar.update(len(part))
        return total
