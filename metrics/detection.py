"""Detection metrics of generated videos: mAP and mIoU against a reference (docs/metrics.md).

The same detector runs on the real and the generated frame j of a video. The reference is its
detections on the real frame with score >= `ref_conf` (Ctrl-V's pseudo ground truth), or the
dataset's boxes; predictions are its detections on the generated frame, with their scores. Both
sides keep only the protocol's classes and boxes passing the size rule.

Protocols (config `det.protocols`):
- `lsa` (the paper): class-aware; vehicle classes; width and height >= 76 px; COCO
  mAP@[.50:.95] computed by pycocotools' COCOeval (its float64 thresholds), one image per frame,
  images numbered video by video.
- `ctrlv` (Ctrl-V's tools/run_tracking_metrics.py): class-agnostic; first 16 frames; width and
  height >= 8% of the frame; detector at conf 0.10 / NMS IoU 0.35; precision and recall counted
  over a confidence sweep 0..1 (step 0.01) for each IoU threshold .50:.95, and Ctrl-V's own rule
  for the area under that curve. It exists so our numbers can be set beside Ctrl-V's.
mIoU (both protocols; `det.miou` picks the definition): per frame, Hungarian matching (scipy) of
reference and prediction boxes on 1 - IoU, within a class when class-aware. Then either
  hungarian_ref  an unmatched reference box scores 0 and the mean runs over all reference boxes, or
  matched_mean   the mean runs over the matched pairs only, a pair counting when its IoU >=
                 `det.miou_match_iou` (the only reading that fits the paper's mIoU beside its mAP).
Everything is also computed per frame index (how consistency decays along the video). mAP and
mIoU are reported in percent, like the paper's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from data.atomic import atomic_path
from data.cli import InputError
from metrics.detectors.base import Detections

PROTOCOL_KEYS = (
    "classes",
    "class_aware",
    "ref_conf",
    "min_box_px",
    "min_box_frac",
    "max_frames",
    "pred_conf",
    "miou_pred_conf",
    "ap",
)
# COCO's IoU thresholds .50:.05:.95, built in float64 exactly as pycocotools' Params builds them
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
CTRLV_CONF_GRID = np.linspace(0.0, 1.0, 101)  # np.arange(0, 1.01, 0.01) in Ctrl-V
MIOU_DEFINITIONS = ("hungarian_ref", "matched_mean")


@dataclass(frozen=True)
class DetProtocol:
    name: str
    classes: tuple | None
    class_aware: bool
    ref_conf: float
    min_box_px: tuple | None
    min_box_frac: tuple | None
    max_frames: int | None
    pred_conf: float
    miou_pred_conf: float
    ap: str
    miou: str = "hungarian_ref"  # det.miou: hungarian_ref | matched_mean
    miou_match_iou: float = 0.5  # det.miou_match_iou: a matched_mean pair counts from this IoU

    @classmethod
    def from_cfg(cls, det_cfg) -> DetProtocol:
        name = det_cfg["protocol"]
        protocols = det_cfg["protocols"]
        if name not in protocols:
            raise InputError(f"det.protocol={name!r} is unknown; valid: {sorted(protocols)}")
        p = protocols[name]
        missing = [k for k in PROTOCOL_KEYS if k not in p]
        if missing:
            raise InputError(f"det.protocols.{name} lacks the keys {missing}")
        if p["ap"] not in ("coco", "ctrlv"):
            raise InputError(f"det.protocols.{name}.ap={p['ap']!r}: valid are 'coco', 'ctrlv'")
        miou_def = det_cfg.get("miou", "hungarian_ref")
        if miou_def not in MIOU_DEFINITIONS:
            raise InputError(f"det.miou={miou_def!r}: valid are {', '.join(MIOU_DEFINITIONS)}")
        match_iou = float(det_cfg.get("miou_match_iou", 0.5))
        if not 0.0 <= match_iou <= 1.0:
            raise InputError(f"det.miou_match_iou={match_iou}: must lie in [0, 1]")
        tup = lambda v: None if v is None else tuple(v)  # noqa: E731
        return cls(
            name=name,
            classes=tup(p["classes"]),
            class_aware=bool(p["class_aware"]),
            ref_conf=float(p["ref_conf"]),
            min_box_px=tup(p["min_box_px"]),
            min_box_frac=tup(p["min_box_frac"]),
            max_frames=p["max_frames"],
            pred_conf=float(p["pred_conf"]),
            miou_pred_conf=float(p["miou_pred_conf"]),
            ap=p["ap"],
            miou=miou_def,
            miou_match_iou=match_iou,
        )

    def select(self, d: Detections, frame_hw: tuple[int, int], min_conf: float = 0.0) -> Detections:
        """Keep the protocol's classes, boxes passing the size rule and scores >= min_conf;
        class-agnostic protocols relabel everything to 0."""
        keep = d.scores >= min_conf
        if self.classes is not None:
            keep &= np.isin(d.labels, self.classes)
        if self.min_box_px is not None:
            keep &= (d.widths >= self.min_box_px[0]) & (d.heights >= self.min_box_px[1])
        if self.min_box_frac is not None:
            h, w = frame_hw
            keep &= (d.widths / w >= self.min_box_frac[0]) & (d.heights / h >= self.min_box_frac[1])
        out = d.select(keep)
        if not self.class_aware:
            out = Detections(out.boxes, out.scores, np.zeros(len(out), np.int64))
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()


# ---------------------------------------------------------------- mIoU


def matched_ious(ref: Detections, pred: Detections, class_aware: bool = True) -> np.ndarray:
    """IoU of each reference box with its Hungarian partner (0 when unmatched), per class."""
    out = np.zeros(len(ref))
    groups = np.unique(ref.labels) if class_aware else [None]
    for c in groups:
        r_idx = np.flatnonzero(ref.labels == c) if class_aware else np.arange(len(ref))
        p_idx = np.flatnonzero(pred.labels == c) if class_aware else np.arange(len(pred))
        if len(r_idx) == 0 or len(p_idx) == 0:
            continue
        iou = _iou(ref.boxes[r_idx], pred.boxes[p_idx])
        rows, cols = linear_sum_assignment(1.0 - iou)
        out[r_idx[rows]] = iou[rows, cols]
    return out


def miou(
    refs: Sequence[Detections],
    preds: Sequence[Detections],
    class_aware: bool = True,
    definition: str = "hungarian_ref",
    match_iou: float = 0.5,
) -> float | None:
    """mIoU in [0, 1] (module docstring). hungarian_ref: mean over all reference boxes of their
    matched IoU (0 when unmatched), None without reference boxes. matched_mean: mean IoU of the
    Hungarian pairs with IoU >= match_iou (a zero-overlap assignment is no match), None without one."""
    if definition not in MIOU_DEFINITIONS:
        raise InputError(f"mIoU definition {definition!r}: valid are {', '.join(MIOU_DEFINITIONS)}")
    ious = [matched_ious(r, p, class_aware) for r, p in zip(refs, preds)]
    ious = np.concatenate(ious) if ious else np.zeros(0)
    if definition == "matched_mean":
        ious = ious[(ious >= match_iou) & (ious > 0)]
    return float(ious.mean()) if len(ious) else None


# ---------------------------------------------------------------- COCO mAP


def coco_map(refs: Sequence[Detections], preds: Sequence[Detections]) -> dict:
    """COCO mAP@[.50:.95], mAP@.50 and @.75 in [0,1], computed by pycocotools' COCOeval itself (its own
    float64 IoU and recall thresholds, iscrowd 0, 100 detections per image); one image per frame,
    image ids in the order given (callers pass frames video by video: that order breaks score ties
    exactly as a COCO json written video by video would). None where pycocotools has nothing to
    average (no reference box at all).

    pycocotools directly, not torchmetrics' MeanAveragePrecision: torchmetrics builds the IoU and
    recall thresholds with float32 `torch.linspace` (0.6 becomes 0.60000002, so a pair whose IoU is
    exactly on a threshold is not matched) and hands pycocotools float32 boxes."""
    ev = coco_evaluate(refs, preds)
    if ev is None:
        return {"map": None, "map_50": None, "map_75": None}
    return coco_summary(ev)


def coco_evaluate(refs: Sequence[Detections], preds: Sequence[Detections]):
    """pycocotools' COCOeval after `evaluate()` (the per-image matching) of these frames, image id =
    frame index; None without any reference box. `coco_summary` accumulates it."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(refs) != len(preds):
        raise ValueError(f"coco_map: {len(refs)} reference frames vs {len(preds)} prediction frames")
    images = [{"id": i} for i in range(len(refs))]
    labels = sorted({int(c) for d in (*refs, *preds) for c in d.labels})
    categories = [{"id": c} for c in labels]
    gt_anns = [
        dict(_coco_box(b), id=k, image_id=i, category_id=int(c), iscrowd=0)
        for k, (i, b, c, _) in enumerate(_boxes(refs), start=1)
    ]
    dt_anns = [
        dict(_coco_box(b), id=k, image_id=i, category_id=int(c), iscrowd=0, score=float(s))
        for k, (i, b, c, s) in enumerate(_boxes(preds), start=1)
    ]
    if not gt_anns:
        return None
    gt, dt = COCO(), COCO()
    gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
    dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}  # as COCO.loadRes builds it
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
    return ev


def coco_summary(ev) -> dict:
    """mAP@[.50:.95], @.50, @.75 in [0, 1] (None where undefined) of an evaluated COCOeval."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        ev.accumulate()
        ev.summarize()
    value = lambda v: None if v < 0 else float(v)  # noqa: E731   (-1 = undefined)
    return {"map": value(ev.stats[0]), "map_50": value(ev.stats[1]), "map_75": value(ev.stats[2])}


def _boxes(frames: Sequence[Detections]):
    """(frame index, xyxy box, label, score) of every box, frame by frame."""
    for i, d in enumerate(frames):
        yield from ((i, b, c, s) for b, c, s in zip(np.asarray(d.boxes, np.float64), d.labels, d.scores))


def _coco_box(b: np.ndarray) -> dict:
    """COCO's [x, y, w, h] and area of one xyxy box, in float64 (as a COCO json written from it)."""
    w, h = float(b[2] - b[0]), float(b[3] - b[1])
    return {"bbox": [float(b[0]), float(b[1]), w, h], "area": w * h}


# ---------------------------------------------------------------- Ctrl-V's confidence sweep


def _count_matches(iou: np.ndarray, thr: float) -> int:
    """Matches as the ultralytics ConfusionMatrix of Ctrl-V's time (8.0-8.2) made them: pairs with
    IoU > thr, best IoU first, each prediction then each reference used once. Re-written here
    because that class has since changed its matching (confidence-greedy) and its API."""
    r, p = np.nonzero(iou > thr)
    if len(r) == 0:
        return 0
    order = np.argsort(-iou[r, p], kind="stable")
    r, p = r[order], p[order]
    _, first = np.unique(p, return_index=True)  # each prediction keeps its best reference
    # each reference then keeps its best remaining prediction: one match per distinct reference
    return len(np.unique(r[first]))


def ctrlv_frame_counts(iou: np.ndarray, n_kept: int, thr: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of one frame with its `n_kept` best-scored predictions, as that ConfusionMatrix
    counts them. Its quirk is kept: when a frame has references and predictions but no match,
    its predictions are not counted as false positives."""
    n_ref = iou.shape[0]
    tp = _count_matches(iou[:, :n_kept], thr) if n_ref and n_kept else 0
    if n_ref == 0:
        fp = n_kept
    else:
        fp = n_kept - tp if tp > 0 else 0
    return tp, fp, n_ref - tp


def ctrlv_ap(
    refs: Sequence[Detections],
    preds: Sequence[Detections],
    iou_thresholds=COCO_IOU_THRESHOLDS,
    conf_grid=CTRLV_CONF_GRID,
) -> dict:
    """Ctrl-V's mAP: for each IoU threshold, TP/FP/FN summed over frames with predictions of score
    > c for each c of the grid (class-agnostic), then the area under (recall, precision)."""
    n_ref = sum(len(r) for r in refs)
    if n_ref == 0:
        return {"map": None, "ap_per_iou": [None] * len(iou_thresholds)}
    frames = []  # per frame: IoU matrix (predictions by score) and
    for ref, pred in zip(refs, preds):  # how many predictions each grid threshold keeps
        order = np.argsort(-pred.scores, kind="stable")
        k = (pred.scores[order][None, :] > conf_grid[:, None]).sum(axis=1)
        uk, inv = np.unique(k, return_inverse=True)
        frames.append((_iou(ref.boxes, pred.boxes[order]), uk, inv))
    aps = []
    for thr in iou_thresholds:
        tp, fp = np.zeros(len(conf_grid)), np.zeros(len(conf_grid))
        for iou, uk, inv in frames:
            counts = np.array([ctrlv_frame_counts(iou, int(ki), thr)[:2] for ki in uk]).reshape(-1, 2)
            tp += counts[inv, 0]
            fp += counts[inv, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        recall = tp / n_ref  # TP + FN = all reference boxes
        valid = ~np.isnan(precision)  # Ctrl-V skips thresholds where precision is NaN
        aps.append(_ctrlv_area(recall[valid], precision[valid]))
    return {"map": float(np.mean(aps)), "ap_per_iou": aps}


def _ctrlv_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Ctrl-V's get_ap_from_rp, kept as it is (quirks included) so the numbers compare: walk the
    pairs from high to low recall, add a rectangle each time the precision rises above its running
    maximum, then add the last pair's precision x recall. Without any pair (no counted prediction
    at any threshold, where Ctrl-V's script would stop with an IndexError) the AP is 0."""
    if len(recall) == 0:
        return 0.0
    order = np.argsort(-recall, kind="stable")  # Python's sort(reverse=True) is stable too
    r, p = recall[order], precision[order]
    last_r, max_p, area = r[0], p[0], 0.0
    for ri, pi in zip(r, p):
        if pi > max_p:
            area += (last_r - ri) * max_p
            max_p, last_r = pi, ri
    return float(area + p[-1] * r[-1])


# ---------------------------------------------------------------- accumulation over videos


class DetectionAccumulator:
    """Collects per-frame references and predictions of every video, then computes the totals and
    the per-frame-index curves. Frames are scored video by video (video 0's frames, then video 1's):
    the image order of a COCO json written per video, which is what breaks pycocotools' score ties."""

    def __init__(self, protocol: DetProtocol):
        self.protocol = protocol
        self.refs: list[list[Detections]] = []  # [video][frame index]
        self.preds: list[list[Detections]] = []

    @property
    def num_videos(self) -> int:
        return len(self.refs)

    def add_video(
        self,
        ref_frames: Sequence[Detections],
        pred_frames: Sequence[Detections],
        frame_hw: tuple[int, int],
        ref_from_dataset: bool = False,
    ) -> None:
        if len(ref_frames) != len(pred_frames):
            raise ValueError(f"{len(ref_frames)} reference frames vs {len(pred_frames)} generated frames")
        p = self.protocol
        n = len(ref_frames) if p.max_frames is None else min(p.max_frames, len(ref_frames))
        ref_conf = 0.0 if ref_from_dataset else p.ref_conf
        self.refs.append([p.select(ref_frames[j], frame_hw, ref_conf) for j in range(n)])
        self.preds.append([p.select(pred_frames[j], frame_hw, p.pred_conf) for j in range(n)])

    def _scores(self, refs, preds) -> dict:
        p = self.protocol
        if p.ap == "coco":
            ap = coco_map(refs, preds)
        else:
            ap = ctrlv_ap(refs, preds)
            ap = {"map": ap["map"], "ap_per_iou": ap["ap_per_iou"]}
        miou_preds = [d.select(d.scores >= p.miou_pred_conf) for d in preds]
        m = miou(refs, miou_preds, p.class_aware, p.miou, p.miou_match_iou)
        pct = lambda v: None if v is None else 100.0 * v  # noqa: E731
        out = {
            "mAP": pct(ap["map"]),
            "mIoU": pct(m),
            "n_ref_boxes": int(sum(len(r) for r in refs)),
            "n_pred_boxes": int(sum(len(d) for d in preds)),
        }
        if "map_50" in ap:
            out.update(mAP_50=pct(ap["map_50"]), mAP_75=pct(ap["map_75"]))
        if "ap_per_iou" in ap:
            out["AP_per_iou"] = [pct(v) for v in ap["ap_per_iou"]]
        return out

    def compute(self, per_frame: bool = True) -> dict:
        """Totals over every frame and, with `per_frame`, the curves by frame index."""
        if not self.refs:
            raise ValueError("no video was added to the detection metrics")
        all_refs = [d for video in self.refs for d in video]
        all_preds = [d for video in self.preds for d in video]
        result = {
            "protocol": self.protocol.name,
            "units": "percent",
            "n_videos": self.num_videos,
            "n_frames": len(all_refs),
            **self._scores(all_refs, all_preds),
        }
        if not per_frame:
            return result
        num_frames = max(len(video) for video in self.refs)
        curves = [
            self._scores([v[j] for v in self.refs if j < len(v)], [v[j] for v in self.preds if j < len(v)])
            for j in range(num_frames)
        ]
        result["per_frame"] = {k: [f[k] for f in curves] for k in ("mAP", "mIoU", "n_ref_boxes")}
        return result


def plot_per_frame(det_result: dict, path: str | Path, title: str = "") -> Path:
    """mAP and mIoU against the frame index (PNG, written atomically)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    per = det_result["per_frame"]
    idx = np.arange(len(per["mAP"]))
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("mAP", "mIoU")):
        y = np.array([np.nan if v is None else v for v in per[key]], dtype=float)
        ax.plot(idx, y, marker="o", ms=3)
        total = det_result.get(key)
        if total is not None:
            ax.axhline(total, ls="--", c="grey", lw=1, label=f"all frames {total:.2f}")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("frame index")
        ax.set_ylabel(f"{key} (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(
        title or f"detection consistency per frame ({det_result['protocol']} protocol, N={det_result['n_videos']})",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path
