"""The per-video quantities behind an evaluation, kept so that its metrics can be recomputed on any
resample of the test videos (metrics/bootstrap.py): I3D features per video (FVD), Inception features
per frame grouped by video (FID), and the detector's raw boxes on every real and generated frame
(mAP / mIoU). Saved beside metrics.json as one `per_video.npz` (numpy arrays only, no pickle).

`statistic(per_video, det_cfg)` is the function of video indices the bootstrap resamples: it gives
the same numbers as metrics.evaluate for `np.arange(N)` (tested), keyed like the table columns
(`fvd.value`, `fid.value`, `det.mAP`, `det.mIoU`).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.atomic import atomic_path
from metrics.detectors.base import Detections

PER_VIDEO_FILE = "per_video.npz"
_SIDES = ("ref", "pred")


@dataclass
class PerVideo:
    names: list[str]
    fvd: dict[str, np.ndarray] = field(default_factory=dict)      # {"real", "gen"}: [N, d]
    fid: dict[str, np.ndarray] = field(default_factory=dict)      # {"real", "gen"}: [N, T, d]
    detections: list[tuple[list[Detections], list[Detections], tuple[int, int]]] | None = None

    @property
    def n(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_parts(cls, parts: Sequence[dict]) -> PerVideo:
        """From metrics.evaluate.extract_features parts, in video order (as merge_features joins them)."""
        names = [n for p in parts for n in p["names"]]
        pv = cls(names)
        metrics = parts[0]["metrics"] if parts else []
        if "fvd" in metrics:
            pv.fvd = {s: np.concatenate([a for p in parts for a in p["features"]["fvd"][s]]) for s in ("real", "gen")}
        if "fid" in metrics:
            pv.fid = {s: np.stack([a for p in parts for a in p["features"]["fid"][s]]) for s in ("real", "gen")}
        if "det" in metrics:
            pv.detections = [d for p in parts for d in p["detections"]]
        for name, arrs in (("fvd", pv.fvd), ("fid", pv.fid)):
            for s, a in arrs.items():
                if len(a) != len(names):
                    raise ValueError(f"per-video {name} {s} features: {len(a)} videos for {len(names)} names")
        return pv

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        arrays = {"names": np.asarray(self.names, dtype=str)}
        for name, arrs in (("fvd", self.fvd), ("fid", self.fid)):
            for s, a in arrs.items():
                arrays[f"{name}_{s}"] = np.asarray(a)
        if self.detections is not None:
            arrays["det_hw"] = np.asarray([hw for _, _, hw in self.detections], np.int64).reshape(-1, 2)
            for k, side in enumerate(_SIDES):
                frames = [d for video in self.detections for d in video[k]]
                arrays[f"det_{side}_frames"] = np.asarray([len(video[k]) for video in self.detections], np.int64)
                arrays[f"det_{side}_counts"] = np.asarray([len(d) for d in frames], np.int64)
                arrays[f"det_{side}_boxes"] = np.concatenate([d.boxes for d in frames] or [np.zeros((0, 4), np.float32)])
                arrays[f"det_{side}_scores"] = np.concatenate([d.scores for d in frames] or [np.zeros(0, np.float32)])
                arrays[f"det_{side}_labels"] = np.concatenate([d.labels for d in frames] or [np.zeros(0, np.int64)])
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PerVideo:
        with np.load(Path(path), allow_pickle=False) as z:
            pv = cls([str(s) for s in z["names"]])
            for name in ("fvd", "fid"):
                if f"{name}_real" in z:
                    setattr(pv, name, {s: z[f"{name}_{s}"] for s in ("real", "gen")})
            if "det_hw" in z:
                sides = []
                for side in _SIDES:
                    counts = z[f"det_{side}_counts"]
                    ends = np.cumsum(counts)
                    starts = ends - counts
                    boxes, scores, labels = (z[f"det_{side}_{k}"] for k in ("boxes", "scores", "labels"))
                    frames = [Detections(boxes[a:b], scores[a:b], labels[a:b]) for a, b in zip(starts, ends)]
                    ends = np.cumsum(z[f"det_{side}_frames"])
                    sides.append([frames[b - n:b] for b, n in zip(ends, z[f"det_{side}_frames"])])
                pv.detections = [(list(r), list(p), (int(hw[0]), int(hw[1])))
                                 for r, p, hw in zip(sides[0], sides[1], z["det_hw"])]
        return pv


# ---------------------------------------------------------------- the statistic the bootstrap resamples
def statistic(pv: PerVideo, det_cfg=None, per_frame: bool = False):
    """idx -> {"fvd.value", "fid.value", "det.mAP", "det.mIoU"} of the videos `idx` (in that order,
    repeats counted), as metrics.evaluate.merge_features computes them. `det_cfg` is the metrics
    node's `det` (protocol, reference); with `per_frame`, also "det.per_frame.mAP" / ".mIoU" as
    tuples per frame index."""
    from metrics.detection import DetectionAccumulator, DetProtocol
    from metrics.frechet import FrechetBiasWarning, frechet_distance

    protocol = DetProtocol.from_cfg(det_cfg) if pv.detections is not None and det_cfg is not None else None
    from_dataset = det_cfg is not None and det_cfg.get("reference") == "dataset"

    def stat(idx: np.ndarray) -> dict:
        with warnings.catch_warnings():     # N < d is reported once by the evaluation itself
            warnings.simplefilter("ignore", FrechetBiasWarning)
            return _stat(np.asarray(idx))

    def _stat(idx: np.ndarray) -> dict:
        out: dict = {}
        if pv.fvd:
            out["fvd.value"] = frechet_distance(pv.fvd["real"][idx], pv.fvd["gen"][idx]).value
        if pv.fid:
            real, gen = pv.fid["real"][idx], pv.fid["gen"][idx]
            out["fid.value"] = frechet_distance(real.reshape(-1, real.shape[-1]), gen.reshape(-1, gen.shape[-1])).value
        if protocol is not None:
            acc = DetectionAccumulator(protocol)
            for i in idx:
                refs, preds, hw = pv.detections[int(i)]
                acc.add_video(refs, preds, hw, ref_from_dataset=from_dataset)
            res = acc.compute(per_frame=per_frame)
            out["det.mAP"], out["det.mIoU"] = res["mAP"], res["mIoU"]
            if per_frame:
                for k in ("mAP", "mIoU"):
                    for j, v in enumerate(res["per_frame"][k]):
                        out[f"det.per_frame.{k}.{j}"] = v
        return out

    return stat
