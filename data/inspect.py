"""python -m data.inspect data=kitti data.root=/path/to/kitti_tracking

Prints clips per split, boxes per class and a histogram of box sizes, and saves a picture of a
few clips with their boxes drawn (inspect.out), so a user can see the data is read right.
Config: configs/inspect.yaml (the `data` group plus `inspect.*`).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.atomic import atomic_path
from data.cli import command
from data.coco import coco_name


def _evenly(n: int, k: int) -> list[int]:
    if n <= 0 or k <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


def _clip_annotations(ds, i: int):
    if hasattr(ds, "annotations"):
        return ds.annotations(i)  # boxes without decoding frames
    clip = ds[i]
    return clip.boxes, clip.labels, int(clip.meta.get("dropped_boxes", 0))


def summarize(ds, max_scan_clips: int, size_bins: Sequence[float], large_px: float) -> dict:
    """Counts over up to `max_scan_clips` evenly spaced clips of `ds`."""
    scanned = _evenly(len(ds), max_scan_clips)
    per_class, sides, dropped, frames, large = Counter(), [], 0, 0, 0
    for i in scanned:
        boxes, labels, d = _clip_annotations(ds, i)
        dropped += d
        for b, lab in zip(boxes, labels):
            frames += 1
            per_class.update(int(x) for x in lab)
            if len(b):
                w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
                sides.append(np.minimum(w, h))
                large += int(((w >= large_px) & (h >= large_px)).sum())
    sides = np.concatenate(sides) if sides else np.zeros(0)
    edges = np.asarray(list(size_bins) + [np.inf], np.float64)
    hist, _ = np.histogram(sides, bins=edges)
    scenes = {r.scene for r in getattr(ds, "refs", [])}
    return {
        "clips": len(ds),
        "scenes": len(scenes) if scenes else None,
        "scanned_clips": len(scanned),
        "frames": frames,
        "boxes": int(len(sides)),
        "per_class": dict(per_class),
        "hist": hist.tolist(),
        "edges": edges.tolist(),
        "large": large,
        "dropped": dropped,
    }


def format_summary(split: str, s: dict, large_px: float) -> str:
    scenes = f" from {s['scenes']} scenes" if s["scenes"] else ""
    lines = [
        f"split {split}: {s['clips']} clips{scenes}; boxes counted over {s['scanned_clips']} "
        f"clips ({s['frames']} frames"
        + (", a frame in overlapping windows counts once per window)" if split == "train" else ")")
    ]
    lines.append(
        f"  boxes: {s['boxes']} ({s['boxes'] / max(s['frames'], 1):.2f} per frame), "
        f"dropped as degenerate after resizing: {s['dropped']}"
    )
    for cid, n in sorted(s["per_class"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {coco_name(cid):<12} (coco {cid:>2}) {n}")
    lines.append("  box shorter side (px):")
    top = max(s["hist"] + [1])
    for lo, hi, n in zip(s["edges"][:-1], s["edges"][1:], s["hist"]):
        bar = "#" * int(round(40 * n / top))
        hi_txt = "inf" if hi == np.inf else f"{hi:g}"
        lines.append(f"    [{lo:>4g}, {hi_txt:>4}) {n:>7}  {bar}")
    pct = 100.0 * s["large"] / max(s["boxes"], 1)
    lines.append(f"  boxes of at least {large_px:g}x{large_px:g} px: {s['large']} ({pct:.1f}%)")
    return "\n".join(lines)


def draw_grid(ds, clip_indices: Sequence[int], frames_per_clip: int, out: str | Path) -> Path:
    """A grid (rows = clips, columns = frames) with every box drawn and labelled; saved atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    clips = [ds[i] for i in clip_indices]
    if not clips:
        raise ValueError("nothing to draw: the dataset has no clips")
    cols = max(1, min(frames_per_clip, min(c.num_frames for c in clips)))
    h, w = clips[0].hw
    fig, axes = plt.subplots(len(clips), cols, figsize=(3.2 * cols, (3.2 * h / w + 0.35) * len(clips)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, clip in enumerate(clips):
        for c, j in enumerate(_evenly(clip.num_frames, cols)):
            ax = axes[r][c]
            ax.imshow(clip.frames[j])
            for b, lab in zip(clip.boxes[j], clip.labels[j]):
                colour = cmap(int(lab) % 10)
                ax.add_patch(
                    Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, edgecolor=colour, linewidth=1.2)
                )
                ax.text(
                    b[0],
                    b[1],
                    coco_name(int(lab)),
                    color="white",
                    fontsize=5,
                    va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.7, pad=0.5, linewidth=0),
                )
            m = clip.meta
            ax.set_title(
                f"{m.get('scene', '?')} frame {m.get('frame_ids', list(range(clip.num_frames)))[j]}"
                f" ({len(clip.boxes[j])} boxes)",
                fontsize=7,
            )
            ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out


def compose_config(overrides: Sequence[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("configs", version_base="1.3"):
        return compose("inspect", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> dict:
    from data.registry import build_dataset

    cfg = compose_config(sys.argv[1:] if argv is None else argv)
    ins = cfg.inspect
    print(
        f"dataset {cfg.data.name}: root={cfg.data.get('root')} size={cfg.data.height}x{cfg.data.width} "
        f"clip_len={cfg.data.clip_len} stride={cfg.data.get('stride', 1)} boxes={cfg.data.get('boxes', 'labels')}"
    )
    summaries, datasets = {}, {}
    for split in ins.splits:
        ds = build_dataset(cfg.data, split)
        datasets[split] = ds
        if ins.get("prepare") and hasattr(ds, "prepare"):
            ds.prepare(progress=True)  # decode (and detect) everything once, e.g. before training
        summaries[split] = summarize(ds, ins.max_scan_clips, ins.size_bins, ins.large_box_px)
        print(format_summary(split, summaries[split], ins.large_box_px))
        clips_file = getattr(ds, "test_clips_file", None) or getattr(getattr(ds, "base", None), "test_clips_file", None)
        if clips_file:
            print(f"  test clips file: {clips_file}")
    first = next((s for s in ins.splits if len(datasets[s])), None)
    out = None
    if first is not None:
        out = draw_grid(datasets[first], _evenly(len(datasets[first]), ins.num_clips), ins.frames_per_clip, ins.out)
        print(f"picture of {min(ins.num_clips, len(datasets[first]))} {first} clips: {out}")
    return {"summaries": summaries, "picture": out}


@command
def _cli(argv: Sequence[str] | None = None) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
