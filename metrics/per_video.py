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
    fvd: dict[str, np.ndarray] = field(default_factory=dict)  # {"real", "gen"}: [N, d]
    fid: dict[str, np.ndarray] = field(default_factory=dict)  # {"real", "gen"}: [N, T, d]
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
                arrays[f"det_{side}_boxes"] = np.concatenate(
                    [d.boxes for d in frames] or [np.zeros((0, 4), np.float32)]
                )
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
                    sides.append([frames[b - n : b] for b, n in zip(ends, z[f"det_{side}_frames"])])
                pv.detections = [
                    (list(r), list(p), (int(hw[0]), int(hw[1]))) for r, p, hw in zip(sides[0], sides[1], z["det_hw"])
                ]
        return pv


# ---------------------------------------------------------------- detection scores of any resample
class DetectionResampler:
    """mAP and mIoU of any sequence of the videos (repeats allowed) without redoing the per-frame work.

    COCO protocol: pycocotools' per-image matching (`COCOeval.evaluate`) depends only on that image's
    boxes, so it runs once over every frame; a resample then reorders its per-image records into the
    resample's frames and runs only `accumulate` + `summarize` on them: exactly what a fresh COCOeval
    over the resampled frames (video by video, as DetectionAccumulator orders them) computes (tested).
    mIoU: each frame's matched IoUs are computed once and concatenated. Other AP protocols (Ctrl-V's
    sweep) rerun DetectionAccumulator on the resample."""

    def __init__(self, detections, protocol, from_dataset: bool = False):
        from metrics.detection import DetectionAccumulator, coco_evaluate, matched_ious

        self.detections, self.protocol, self.from_dataset = detections, protocol, from_dataset
        acc = DetectionAccumulator(protocol)
        for refs, preds, hw in detections:
            acc.add_video(refs, preds, hw, ref_from_dataset=from_dataset)
        self.refs, self.preds = acc.refs, acc.preds  # [video][frame], selected
        lengths = [len(v) for v in self.refs]
        self.start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        self.length = np.asarray(lengths, int)
        frames_r = [d for v in self.refs for d in v]
        frames_p = [d for v in self.preds for d in v]
        self.ious = [
            matched_ious(r, p.select(p.scores >= protocol.miou_pred_conf), protocol.class_aware)
            for r, p in zip(frames_r, frames_p)
        ]
        self.n_ref = np.asarray([len(r) for r in frames_r])
        self.coco = coco_evaluate(frames_r, frames_p) if protocol.ap == "coco" else None
        if self.coco is not None:
            self._records = np.empty(len(self.coco.evalImgs), dtype=object)  # numpy gathers a resample's
            self._records[:] = self.coco.evalImgs  # records in C instead of a Python loop per record
            k_n, a_n, i_n = len(self.coco._paramsEval.catIds), len(self.coco._paramsEval.areaRng), len(frames_r)
            self._block = (np.arange(k_n)[:, None] * a_n * i_n + np.arange(a_n)[None, :] * i_n).reshape(-1, 1)

    def _frames(self, idx, frame: int | None) -> np.ndarray:
        if frame is None:
            return np.concatenate([np.arange(self.start[i], self.start[i] + self.length[i]) for i in idx])
        return np.asarray([self.start[i] + frame for i in idx if frame < self.length[i]], int)

    def scores(self, idx, frame: int | None = None) -> dict:
        """{"mAP", "mIoU"} in percent of the videos `idx` (all frames, or frame index `frame` only)."""
        from metrics.detection import coco_summary

        p = self.protocol
        frames = self._frames(np.asarray(idx, int), frame)
        if self.coco is not None:
            ev = self.coco
            if self.n_ref[frames].sum() == 0:
                ap = None
            else:
                # the order of COCOeval.evalImgs: category, then area range, then image
                ev.evalImgs = self._records[(self._block + frames[None, :]).ravel()].tolist()
                ev.params.imgIds = ev._paramsEval.imgIds = list(range(len(frames)))
                ap = coco_summary(ev)["map"]
        else:
            return self._naive(idx, frame)
        ious = np.concatenate([self.ious[f] for f in frames]) if len(frames) else np.zeros(0)
        if p.miou == "matched_mean":
            ious = ious[(ious >= p.miou_match_iou) & (ious > 0)]
        m = float(ious.mean()) if len(ious) else None
        pct = lambda v: None if v is None else 100.0 * v  # noqa: E731
        return {"mAP": pct(ap), "mIoU": pct(m)}

    def _naive(self, idx, frame):
        from metrics.detection import DetectionAccumulator

        acc = DetectionAccumulator(self.protocol)
        for i in idx:
            refs, preds, hw = self.detections[int(i)]
            if frame is not None:
                if frame >= len(refs):
                    continue
                refs, preds = refs[frame : frame + 1], preds[frame : frame + 1]
            acc.add_video(refs, preds, hw, ref_from_dataset=self.from_dataset)
        if not acc.refs:
            return {"mAP": None, "mIoU": None}
        res = acc.compute(per_frame=False)
        return {"mAP": res["mAP"], "mIoU": res["mIoU"]}


# ---------------------------------------------------------------- the statistic the bootstrap resamples
def statistic(pv: PerVideo, det_cfg=None, per_frame: bool = False, keys=None):
    """idx -> {"fvd.value", "fid.value", "det.mAP", "det.mIoU"} of the videos `idx` (in that order,
    repeats counted), as metrics.evaluate.merge_features computes them. `det_cfg` is the metrics
    node's `det` (protocol, reference); with `per_frame`, also "det.per_frame.mAP.<j>" / ".mIoU.<j>"
    per frame index j. `keys` limits the work to those metrics (a "det..." key brings mAP and mIoU)."""
    from metrics.detection import DetProtocol
    from metrics.frechet import FrechetBiasWarning, frechet_distance

    want = (lambda k: True) if keys is None else (lambda k: any(x.split(".")[0] == k for x in keys))  # noqa: E731
    det = None
    if pv.detections is not None and det_cfg is not None and want("det"):
        det = DetectionResampler(
            pv.detections, DetProtocol.from_cfg(det_cfg), from_dataset=det_cfg.get("reference") == "dataset"
        )
    num_frames = max((len(v[0]) for v in pv.detections), default=0) if det is not None else 0

    def stat(idx: np.ndarray) -> dict:
        with warnings.catch_warnings():  # N < d is reported once by the evaluation itself
            warnings.simplefilter("ignore", FrechetBiasWarning)
            return _stat(np.asarray(idx))

    def _stat(idx: np.ndarray) -> dict:
        out: dict = {}
        if pv.fvd and want("fvd"):
            out["fvd.value"] = frechet_distance(pv.fvd["real"][idx], pv.fvd["gen"][idx]).value
        if pv.fid and want("fid"):
            real, gen = pv.fid["real"][idx], pv.fid["gen"][idx]
            out["fid.value"] = frechet_distance(real.reshape(-1, real.shape[-1]), gen.reshape(-1, gen.shape[-1])).value
        if det is not None:
            res = det.scores(idx)
            out["det.mAP"], out["det.mIoU"] = res["mAP"], res["mIoU"]
            if per_frame:
                for j in range(num_frames):
                    res = det.scores(idx, frame=j)
                    for k in ("mAP", "mIoU"):
                        out[f"det.per_frame.{k}.{j}"] = res[k]
        return out

    return stat
