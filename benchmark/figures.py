"""Figures of a table (matplotlib, Agg): loss curves, per-frame detection curves, real vs generated frames.
`table_figures` picks each figure's inputs from the store (called by benchmark/render.py).

Inputs are files other parts write:
- the trainer's JSONL loss log, one JSON object a line with keys step, epoch, loss, loss_diff,
  loss_feat (trainers/loop.py);
- metrics.json's "det" -> "per_frame": {"mAP": [...], "mIoU": [...]} (percent, one value per frame
  index; metrics/detection.py);
- frame folders <dir>/<clip>/000000.png ... and the test set's boxes/<clip>.json
  ({"frames": [{"boxes": [[x1,y1,x2,y2], ...], ...}, ...]}); an evaluate stage may add
  detections/<clip>.json in the same format (with "scores") to draw the detector's boxes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark.stages import select
from data.atomic import atomic_path, data_entries

if TYPE_CHECKING:
    from benchmark.stages import StageGraph
    from benchmark.store import Store


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path) -> Path:
    """Atomically, through a temp file of its own: two runs rendering the same figure at once both
    succeed (the last rename wins) and a reader never sees half a PNG."""
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return out_png


def read_loss_log(path: str | Path) -> list[dict]:
    """The records of a JSONL loss log; a malformed line fails naming the file and line."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from e
        if "step" not in rec:
            raise ValueError(f"{path}:{n}: record without 'step'")
        out.append(rec)
    return out


def concat_logs(paths: Sequence[str | Path]) -> list[dict]:
    """The logs of a row's epoch stages, epoch 1 first, as one curve (steps made increasing when a
    stage restarts its count)."""
    out: list[dict] = []
    for p in paths:
        recs = read_loss_log(p)
        offset = out[-1]["step"] if recs and out and recs[0]["step"] <= out[-1]["step"] else 0
        out += [{**r, "step": r["step"] + offset} for r in recs]
    return out


def plot_loss_curves(curves: Mapping[str, Sequence[str | Path]], out_png: str | Path, title: str = "") -> Path | None:
    """One panel per loss term (loss, loss_diff, loss_feat), one line per row."""
    data = {row: concat_logs(paths) for row, paths in curves.items() if paths}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    plt = _plt()
    terms = [t for t in ("loss", "loss_diff", "loss_feat") if any(t in r for recs in data.values() for r in recs)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for row, recs in data.items():
            pts = [(r["step"], r[term]) for r in recs if r.get(term) is not None]
            if pts:
                ax.plot(*zip(*pts), label=row, linewidth=1)
        ax.set_title(term)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9, y=1.02)
    return _save(fig, out_png)


def plot_per_frame(
    per_frame: Mapping[str, Mapping[str, Sequence[float]]],
    out_png: str | Path,
    metrics: Sequence[str] = ("mAP", "mIoU"),
    scale: float = 1.0,
    title: str = "",
) -> Path | None:
    """mAP / mIoU by frame index (how consistency decays over the clip), one line per row; a row's
    `<metric>_low` / `<metric>_high` lists (a bootstrap interval per frame index) shade a band."""
    data = {row: pf for row, pf in per_frame.items() if pf and any(pf.get(m) for m in metrics)}
    if not data:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for row, pf in data.items():
            ys = [np.nan if v is None else v * scale for v in pf.get(m) or []]
            if ys:
                (line,) = ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=2, linewidth=1, label=row)
                lo, hi = pf.get(f"{m}_low"), pf.get(f"{m}_high")
                if lo and hi and len(lo) == len(ys):
                    ax.fill_between(
                        range(1, len(ys) + 1),
                        [np.nan if v is None else v * scale for v in lo],
                        [np.nan if v is None else v * scale for v in hi],
                        color=line.get_color(),
                        alpha=0.2,
                        linewidth=0,
                    )
        ax.set_title(f"{m} per frame index")
        ax.set_xlabel("frame index")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9, y=1.02)
    return _save(fig, out_png)


def _frames(folder: Path) -> list[Path]:
    return [p for p in data_entries(folder, dirs=False) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]


def _boxes(path: Path | None, j: int, min_score: float = 0.0, max_boxes: int | None = None) -> list:
    """Boxes of frame j; of detections (with scores), the `max_boxes` best with score >= `min_score`."""
    if path is None or not path.exists():
        return []
    frames = json.loads(path.read_text()).get("frames", [])
    if j >= len(frames):
        return []
    boxes, scores = frames[j].get("boxes", []), frames[j].get("scores")
    if scores is None:
        return boxes
    kept = sorted(((s, b) for b, s in zip(boxes, scores) if s >= min_score), key=lambda sb: -sb[0])
    return [b for _, b in kept[:max_boxes]]


def plot_frame_grid(
    real_dir: str | Path,
    gen_dirs: Mapping[str, str | Path],
    clips: Sequence[str],
    out_png: str | Path,
    n_frames: int = 3,
    boxes_dir: str | Path | None = None,
    detections_dirs: Mapping[str, str | Path] | None = None,
    title: str = "",
    min_score: float = 0.5,
    max_boxes: int | None = 10,
) -> Path | None:
    """Rows: for each clip, the real frames then each generated version; columns: evenly spaced
    frames. Real frames get the dataset's boxes (green), generated ones the detector's (red) when
    an evaluate stage wrote detections/<clip>.json."""
    from PIL import Image

    real_dir = Path(real_dir)
    clips = [c for c in clips if (real_dir / c).is_dir()]
    if not clips:
        return None
    plt = _plt()
    sources = [("real", real_dir)] + [(k, Path(v)) for k, v in gen_dirs.items()]
    nrows = len(clips) * len(sources)
    fig, axes = plt.subplots(nrows, n_frames, figsize=(2.2 * n_frames, 1.5 * nrows), squeeze=False)
    for ci, clip in enumerate(clips):
        for si, (name, folder) in enumerate(sources):
            files = _frames(folder / clip) if (folder / clip).is_dir() else []
            idx = np.linspace(0, len(files) - 1, n_frames).round().astype(int) if files else []
            for k in range(n_frames):
                ax = axes[ci * len(sources) + si][k]
                ax.axis("off")
                if k == 0:
                    ax.text(-0.05, 0.5, f"{clip}\n{name}", transform=ax.transAxes, ha="right", va="center", fontsize=6)
                if not len(idx):
                    continue
                j = int(idx[k])
                ax.imshow(np.asarray(Image.open(files[j]).convert("RGB")))
                ax.set_title(f"frame {j}", fontsize=6)
                if name == "real":
                    box_file = Path(boxes_dir) / f"{clip}.json" if boxes_dir else None
                    color = "lime"
                else:
                    d = (detections_dirs or {}).get(name)
                    box_file = Path(d) / f"{clip}.json" if d else None
                    color = "red"
                for x1, y1, x2, y2 in (b[:4] for b in _boxes(box_file, j, min_score, max_boxes)):
                    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, linewidth=0.8))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.5 * nrows)))  # room for the two-line title only
    return _save(fig, out_png)


# ------------------------------------------------------------------------------------ a table's figures
def table_figures(graph: StageGraph, store: Store, out_dir: Path, extra: dict, note: str = "") -> dict[str, Path]:
    """Every figure's title ends with the profile's note (smoke: tiny random models ...)."""
    spec, stem = graph.table, f"table_{graph.table.name}"
    note = f"\n{note}" if note else ""
    fig_cfg = select(graph.render.run_cfg, "benchmark.figures", {}) or {}
    out: dict[str, Path] = {}
    logs = {}
    for p in graph.first_rows():
        paths = []
        for h in p.train:
            res = store.result(h)
            if res and res.get("log") and Path(res["log"]).exists():
                paths.append(res["log"])
        if paths:
            logs[p.row.name] = paths
    made = plot_loss_curves(logs, out_dir / f"{stem}_loss.png", title=f"Table {spec.name}: training losses{note}")
    if made:
        out["loss_curves"] = made
    primary = spec.detector
    per_frame = {}
    for row, ex in extra.items():
        pf = ex.get("per_frame") or {}
        det = primary if primary in pf else next(iter(pf), None)
        if det:
            band = (ex.get("per_frame_band") or {}).get(det) or {}
            per_frame[row if len(pf) == 1 or det == primary else f"{row} ({det})"] = {**pf[det], **band}
    shaded = any(f"{m}_low" in pf for pf in per_frame.values() for m in ("mAP", "mIoU"))
    conf = float(select(graph.render.run_cfg, "benchmark.bootstrap.confidence", 0.95))
    band = f"; shaded: {100 * conf:g}% bootstrap interval over the test videos" if shaded else ""
    made = plot_per_frame(
        per_frame,
        out_dir / f"{stem}_per_frame.png",
        title=f"Table {spec.name}: detection metrics per frame index{band}{note}",
    )
    if made:
        out["per_frame"] = made
    grid = grid_inputs(graph, store, int(fig_cfg.get("max_rows", 4)))
    if grid:
        ts, gens, dets = grid
        made = plot_frame_grid(
            ts["frames"],
            gens,
            list(ts.get("clips", []))[: int(fig_cfg.get("grid_clips", 2))],
            out_dir / f"{stem}_frames.png",
            n_frames=int(fig_cfg.get("grid_frames", 3)),
            boxes_dir=ts.get("boxes"),
            detections_dirs=dets,
            min_score=float(fig_cfg.get("det_min_score", 0.5)),
            max_boxes=int(fig_cfg.get("det_max_boxes", 10)),
            title=f"Table {spec.name}: real (dataset boxes) vs generated (detections){note}",
        )
        if made:
            out["frames"] = made
    return out


def grid_inputs(graph: StageGraph, store: Store, max_rows: int):
    """The first test set with results, and the generated frame folders of the rows that use it."""
    plans = [p for p in graph.first_rows() if p.generate and store.result(p.generate)]
    if not plans:
        return None
    ts_hash = plans[0].testset
    ts = store.result(ts_hash)
    if not ts:
        return None
    gens, dets = {}, {}
    for p in plans:
        if p.testset != ts_hash or len(gens) >= max_rows:
            continue
        gens[p.row.name] = store.result(p.generate)["frames"]
        ev = store.result(next(iter(p.evaluate.values()))) if p.evaluate else None
        det_dir = store.dir(next(iter(p.evaluate.values()))) / "detections" if p.evaluate else None
        if ev and det_dir and det_dir.is_dir():
            dets[p.row.name] = det_dir
    return ts, gens, dets
