"""Pseudo-label boxes (the paper's future work): training boxes from a detector run on the real
frames, so unlabeled video can be fine-tuned with LSA (`data.boxes=detector`).

The detector is any object with `.detect(frames uint8 [N,H,W,3] RGB) -> list of N detections`,
each with `.boxes` (xyxy pixels [n,4]), `.scores` [n] and `.labels` [n] (80-class COCO ids), built
from the `data.pseudo_boxes.detector` node by `hydra.utils.instantiate` (a `_target_` node), so
data/ never imports metrics/. It runs on the clip's frames as the loader returns them (resized).

Every frame's raw detections are cached under <data.cache.dir>/pseudo_boxes/<detector hash>/,
keyed by a hash of the frame's pixels: overlapping training windows share frames, and the score
threshold / class filter apply after the cache, so changing them needs no new detection run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.cache import DEFAULT_CACHE_DIR, atomic_save_npz, config_hash
from data.cli import InputError
from data.clip import Clip
from data.transforms import rescale_boxes


def _numpy(x, dtype, shape_tail=()) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape((-1,) + shape_tail)


def frame_key(frame: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(frame).tobytes())
    h.update(str(frame.shape).encode())
    return h.hexdigest()


class PseudoBoxes(Sequence[Clip]):
    """Wraps a dataset of clips and replaces their boxes by filtered detections."""

    def __init__(
        self,
        base: Sequence[Clip],
        detector=None,
        detector_cfg=None,
        score_threshold: float = 0.5,
        classes: Sequence[int] | None = None,
        batch_size: int = 8,
        cache_dir: str | Path | None = None,
        min_box_size: float = 1.0,
        cache_key: str | None = None,
    ):
        if detector is None and detector_cfg is None:
            raise InputError(
                "data.boxes=detector needs data.pseudo_boxes.detector: a node with a "
                "_target_ building the detector (see docs/data.md)"
            )
        self.base, self._detector, self.detector_cfg = base, detector, detector_cfg
        self.score_threshold = float(score_threshold)
        self.classes = None if classes is None else {int(c) for c in classes}
        self.batch_size, self.min_box_size = int(batch_size), float(min_box_size)
        if cache_key is None:
            cache_key = (
                config_hash(self._cfg_container())
                if detector_cfg is not None
                else f"{type(detector).__module__}.{type(detector).__qualname__}"
            )
        self.cache_key = config_hash(cache_key)[:16]
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / "pseudo_boxes" / self.cache_key

    @classmethod
    def from_config(cls, base: Sequence[Clip], cfg) -> PseudoBoxes:
        pb = cfg.get("pseudo_boxes")
        if pb is None:
            raise InputError(
                "data.boxes=detector needs a data.pseudo_boxes node (e.g. +data/pseudo_boxes=default, see docs/data.md)"
            )
        cache_cfg = cfg.get("cache") or {}
        cache_dir = cache_cfg.get("dir") or DEFAULT_CACHE_DIR
        return cls(
            base,
            detector_cfg=pb.get("detector"),
            score_threshold=pb.get("score_threshold", 0.5),
            classes=pb.get("classes"),
            batch_size=pb.get("batch_size", 8),
            cache_dir=cache_dir if pb.get("cache", True) else None,
            min_box_size=cfg.get("min_box_size", 1.0),
        )

    def _cfg_container(self):
        from omegaconf import DictConfig, OmegaConf

        c = self.detector_cfg
        return OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else c

    @property
    def detector(self):
        if self._detector is None:
            from hydra.utils import instantiate

            self._detector = instantiate(self.detector_cfg)
            if not hasattr(self._detector, "detect"):
                raise TypeError(
                    f"data.pseudo_boxes.detector built {type(self._detector).__name__}, which has no .detect(frames)"
                )
        return self._detector

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.detector_cfg is not None:
            state["_detector"] = None  # workers rebuild it from the config if they need it
        return state

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Clip:
        clip = self.base[i]
        hw = clip.hw
        boxes, labels = [], []
        for b, s, lab in self.detections(clip.frames):
            keep = s >= self.score_threshold
            if self.classes is not None:
                keep &= np.isin(lab, list(self.classes))
            b, ok = rescale_boxes(b[keep], hw, hw, self.min_box_size)  # clip to the frame only
            boxes.append(b[ok])
            labels.append(lab[keep][ok])
        meta = {
            **clip.meta,
            "boxes_source": "detector",
            "pseudo_boxes": {
                "detector": self.cache_key,
                "score_threshold": self.score_threshold,
                "classes": sorted(self.classes) if self.classes is not None else None,
            },
        }
        return Clip(
            frames=clip.frames,
            boxes=boxes,
            labels=labels,
            track_ids=[np.full(len(b), -1, np.int64) for b in boxes],
            meta=meta,
        )

    def prepare(self, progress: bool = True) -> None:
        """Run the detector on every clip's frames now (fills the detection cache)."""
        from tqdm import tqdm

        if hasattr(self.base, "prepare"):
            self.base.prepare(progress)
        for i in tqdm(range(len(self)), desc="pseudo boxes", disable=not progress, unit="clip"):
            self.detections(self.base[i].frames)

    def detections(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Raw (boxes [n,4], scores [n], labels [n]) per frame, from the cache or the detector."""
        keys = [frame_key(f) for f in frames]
        out = [self._load(k) for k in keys]
        missing = [j for j, d in enumerate(out) if d is None]
        for start in range(0, len(missing), self.batch_size):
            idx = missing[start : start + self.batch_size]
            dets = self.detector.detect(np.ascontiguousarray(frames[idx]))
            if len(dets) != len(idx):
                raise ValueError(f"detector returned {len(dets)} results for {len(idx)} frames")
            for j, d in zip(idx, dets):
                out[j] = (_numpy(d.boxes, np.float32, (4,)), _numpy(d.scores, np.float32), _numpy(d.labels, np.int64))
                self._save(keys[j], out[j])
        return out

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npz"

    def _load(self, key: str):
        if self.cache_dir is None:
            return None
        try:
            with np.load(self._path(key), allow_pickle=False) as z:
                return z["boxes"], z["scores"], z["labels"]
        except (FileNotFoundError, ValueError, OSError, KeyError, EOFError):
            return None

    def _save(self, key: str, det) -> None:
        if self.cache_dir is not None:
            atomic_save_npz(self._path(key), boxes=det[0], scores=det[1], labels=det[2])
