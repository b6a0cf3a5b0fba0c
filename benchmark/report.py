"""The HTML report of a table: `results/<profile>/table_<N>.html` + `table_<N>_assets/`, static files only.

Written by `benchmark.render.render` beside the markdown, LaTeX and figures, from the same store:
- the table (ours beside the paper's numbers, best in bold, second underlined, as in the markdown),
  and per row links to the folders of its stages (test set, each train epoch, generate, evaluate);
- for a few test clips (`benchmark.report.clips`), the real clip with the dataset's boxes (green) beside
  each row's generated video with its detector's boxes (red; score >= `benchmark.figures.det_min_score`,
  the best `det_max_boxes`), re-encoded small (H.264 yuv420p mp4, `benchmark.report.width` pixels wide)
  into the assets folder, so the page plays in any browser without the store;
- the figures `benchmark/figures.py` drew (loss curves, per-frame mAP / mIoU, frame grid);
- the provenance of every stage: whatever its stage.json and result.json record (kind, rows, attempts
  and their times, and any further keys a stage records), shown as they are.
Links to stage folders are relative, so the page works where results/ and the store keep their places.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from benchmark.figures import _boxes as frame_boxes  # the boxes the frame grid draws, same filter
from benchmark.stages import select
from benchmark.store import atomic_write_text
from data.atomic import atomic_dir, data_entries

GREEN, RED = (0, 230, 0), (255, 40, 40)
# stage.json keys shown in the stage table itself; every other key goes to the record below it
_SHOWN = ("kind", "hash", "rows", "deps", "params", "attempts")


def write_report(
    graph, store, out_dir: Path, table_json: Mapping, figures: Mapping[str, Path], *, note: str = ""
) -> dict[str, Path]:
    """Write table_<N>.html and table_<N>_assets/ (replaced whole, atomically); returns their paths."""
    out_dir = Path(out_dir)
    stem = f"table_{graph.table.name}"
    cfg = select(graph.render.run_cfg, "benchmark.report", {}) or {}
    assets = out_dir / f"{stem}_assets"
    with atomic_dir(assets) as tmp:
        clips = _videos(graph, store, tmp, cfg)
    body = [
        f"<h1>Table {_e(graph.table.name)}: {_e(graph.table.title)}</h1>",
        f"<p class=note>{_e(note)}</p>" if note else "",
        f"<p class=caption>{_e(table_json.get('caption', ''))}</p>",
        _table(graph, store, out_dir, table_json),
        (
            f"<p>Also as <a href='{stem}.md'>markdown</a>, <a href='{stem}.tex'>LaTeX</a>, "
            f"<a href='{stem}.json'>JSON</a>.</p>"
        ),
        _videos_html(clips, f"{stem}_assets"),
        _figures_html(figures, out_dir),
        _provenance(graph, store, out_dir),
    ]
    page = (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Table {_e(graph.table.name)} "
        f"({_e(graph.profile)})</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )
    return {"html": atomic_write_text(out_dir / f"{stem}.html", page), "html_assets": assets}


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}td.paper{color:#666}
.note{background:#fff3cd;padding:4px 8px;display:inline-block}.caption{font-size:13px;max-width:1100px}
.clip{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}.clip figure{margin:0}
figcaption{font-size:12px;max-width:260px}video{background:#000;display:block}
img.fig{max-width:100%;border:1px solid #ddd;margin:4px 0}details{margin:2px 0}pre{font-size:11px;
background:#f7f7f7;padding:6px;overflow-x:auto}a.pending{color:#999}"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _href(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(out_dir).resolve())).as_posix()


# ------------------------------------------------------------------------------------ the table
def _cell(text: str, mark: str | None) -> str:
    t = _e(text)
    return f"<b>{t}</b>" if mark == "best" else f"<u>{t}</u>" if mark == "second" else t


def _stage_links(plan, store, out_dir: Path) -> str:
    links = []
    items = [("test set", plan.testset)] + [(f"train e{i}", h) for i, h in enumerate(plan.train, start=1)]
    items += [("generate", plan.generate)] + [(f"evaluate {d}", h) for d, h in plan.evaluate.items()]
    for label, h in items:
        if not h:
            continue
        done = store.is_done(h)
        cls = "" if done else " class=pending"
        links.append(
            f"<a{cls} href='{_e(_href(store.dir(h), out_dir))}/' title='{h}"
            f"{'' if done else ' (not finished)'}'>{_e(label)}</a>"
        )
    return " &middot; ".join(links)


def _table(graph, store, out_dir: Path, doc: Mapping) -> str:
    cols = doc["columns"]
    head = "".join(f"<th rowspan=2>{_e(k)}</th>" for k in doc["label_columns"])
    arrow = {"up": "&uarr;", "down": "&darr;"}
    head += "".join(
        f"<th colspan=2>{_e((c['group'] + ' ') if c.get('group') else '')}{_e(c['name'])} "
        f"{arrow.get(c['direction'], '')}</th>"
        for c in cols
    )
    sub = "<th>ours</th><th>paper</th>" * len(cols)
    plans = {p.row.name: p for p in graph.rows}
    lines = [f"<table id=results><tr>{head}<th rowspan=2>stages</th></tr><tr>{sub}</tr>"]
    for r in doc["rows"]:
        cells = "".join(f"<td>{_e(r['labels'].get(k, ''))}</td>" for k in doc["label_columns"])
        for c in cols:
            cell = r["cells"][c["id"]]
            cells += (
                f"<td class=num>{_cell(cell['ours_text'], cell['ours_mark'])}</td>"
                f"<td class='num paper'>{_cell(cell['paper_text'], cell['paper_mark'])}</td>"
            )
        plan = plans.get(r["name"])
        links = _stage_links(plan, store, out_dir) if plan else ""
        lines.append(f"<tr id='row-{_e(r['name'])}'>{cells}<td>{links}</td></tr>")
    return "\n".join(lines) + "</table>"


# ------------------------------------------------------------------------------------ videos
def _videos(graph, store, assets: Path, cfg: Mapping) -> list[dict]:
    """Encode the real and generated videos of the first `clips` test clips; returns, per clip, the
    cells [{label, file (relative to assets) or None, caption}]."""
    fig = select(graph.render.run_cfg, "benchmark.figures", {}) or {}
    min_score, max_boxes = float(fig.get("det_min_score", 0.5)), int(fig.get("det_max_boxes", 10))
    n_clips, max_rows, width = int(cfg.get("clips", 2)), int(cfg.get("max_rows", 8)), int(cfg.get("width", 192))
    quality = float(cfg.get("quality", 5))
    fps = float(select(graph.render.run_cfg, "benchmark.generate.fps", 7))
    plans = [p for p in graph.rows if p.generate and store.result(p.generate)]
    if not plans:
        return []
    ts_hash = plans[0].testset
    ts = store.result(ts_hash) if ts_hash else None
    if not ts:
        return []
    real_dir = Path(ts["frames"])
    names = [p.name for p in data_entries(real_dir, dirs=True)][:n_clips]
    plans = [p for p in plans if p.testset == ts_hash][:max_rows]
    boxes_dir = Path(ts["boxes"]) if ts.get("boxes") else None
    out = []
    for clip in names:
        cells = [
            _encode_cell(
                "real",
                "real (dataset boxes)",
                real_dir / clip,
                boxes_dir / f"{clip}.json" if boxes_dir else None,
                GREEN,
                assets,
                clip,
                width,
                fps,
                quality,
                0.0,
                None,
            )
        ]
        for p in plans:
            det = graph.table.detector if graph.table.detector in p.evaluate else next(iter(p.evaluate), None)
            det_file = store.dir(p.evaluate[det]) / "detections" / f"{clip}.json" if det else None
            label = " / ".join(str(v) for v in p.row.labels.values()) or p.row.name
            caption = f"{label} ({det} detections)" if det_file and det_file.is_file() else label
            cells.append(
                _encode_cell(
                    p.row.name,
                    caption,
                    Path(store.result(p.generate)["frames"]) / clip,
                    det_file,
                    RED,
                    assets,
                    clip,
                    width,
                    fps,
                    quality,
                    min_score,
                    max_boxes,
                )
            )
        out.append({"clip": clip, "cells": cells})
    return out


def _encode_cell(
    key,
    caption,
    folder: Path,
    box_file: Path | None,
    color,
    assets: Path,
    clip: str,
    width: int,
    fps: float,
    quality: float,
    min_score: float,
    max_boxes: int | None,
) -> dict:
    from data.video_io import read_video, write_video

    if not folder.is_dir():
        return {"label": caption, "file": None}
    frames = read_video(folder)
    boxes = [frame_boxes(box_file, j, min_score, max_boxes) for j in range(len(frames))] if box_file else None
    name = f"{clip}_{_slug(key)}.mp4"
    write_video(assets / name, _draw(frames, boxes, color, width), fps=fps, quality=quality)
    return {"label": caption, "file": name}


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(s))


def _draw(frames: np.ndarray, boxes, color, width: int) -> np.ndarray:
    """Frames resized to `width` pixels (height kept in proportion; both even, as yuv420p needs), boxes drawn."""
    from PIL import Image, ImageDraw

    t, h, w = frames.shape[:3]
    s = width / w
    nw, nh = 2 * max(1, round(w * s / 2)), 2 * max(1, round(h * s / 2))
    out = []
    for j in range(t):
        img = Image.fromarray(frames[j]).resize((nw, nh), Image.NEAREST if s >= 1 else Image.BILINEAR)
        d = ImageDraw.Draw(img)
        for b in boxes[j] if boxes else []:
            x1, y1, x2, y2 = (float(v) for v in b[:4])
            d.rectangle([x1 * nw / w, y1 * nh / h, x2 * nw / w, y2 * nh / h], outline=color, width=2)
        out.append(np.asarray(img))
    return np.stack(out)


def _videos_html(clips: list[dict], assets: str) -> str:
    if not clips:
        return "<h2>Videos</h2><p>No generated videos yet.</p>"
    parts = ["<h2>Videos: real and generated</h2>"]
    for c in clips:
        figs = []
        for cell in c["cells"]:
            if cell["file"] is None:
                media = "<p>(no video)</p>"
            else:
                media = (
                    f"<video src='{_e(assets)}/{_e(cell['file'])}' controls muted loop autoplay "
                    f"playsinline preload=auto></video>"
                )
            figs.append(f"<figure>{media}<figcaption>{_e(cell['label'])}</figcaption></figure>")
        parts.append(f"<h3>{_e(c['clip'])}</h3><div class=clip>{''.join(figs)}</div>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ figures, provenance
_FIGURES = {
    "loss_curves": "Training losses",
    "per_frame": "Detection metrics per frame index",
    "frames": "Real vs generated frames",
}


def _figures_html(figures: Mapping[str, Path], out_dir: Path) -> str:
    if not figures:
        return ""
    parts = ["<h2>Figures</h2>"]
    for k, path in figures.items():
        parts.append(f"<h3>{_e(_FIGURES.get(k, k))}</h3><img class=fig alt='{_e(k)}' src='{_e(_href(path, out_dir))}'>")
    return "\n".join(parts)


def _provenance(graph, store, out_dir: Path) -> str:
    rows = [
        (
            "<h2>Provenance</h2><p>Every stage of the table as its folder records it (stage.json, result.json)."
            "</p><table id=provenance><tr><th>kind</th><th>stage</th><th>what</th><th>rows</th><th>status</th>"
            "<th>attempts</th><th>record</th></tr>"
        )
    ]
    for s in graph.order():
        info = store.stage_info(s.hash)
        status = "done" if store.is_done(s.hash) else ("failed" if store.failure(s.hash) else "not run")
        attempts = "<br>".join(
            f"{_e(a.get('started', '?'))} &rarr; {_e(a.get('finished', '...'))}{' (resumed)' if a.get('resumed') else ''}"
            for a in info.get("attempts", [])
        )
        record = {k: v for k, v in info.items() if k not in _SHOWN and k != "config"}
        result = store.result(s.hash) if status == "done" else None
        details = ""
        if record or result:
            body = json.dumps({"stage.json (other keys)": record, "result.json": result}, indent=1, default=str)
            details = f"<details><summary>record</summary><pre>{_e(body)}</pre></details>"
        folder = _e(_href(store.dir(s.hash), out_dir))
        rows.append(
            f"<tr><td>{_e(s.kind)}</td><td><a href='{folder}/'>{s.hash}</a> (<a href='{folder}/run_config.yaml'>"
            f"config</a>)</td><td>{_e(s.describe())}</td><td>{_e(', '.join(s.rows))}</td><td>{status}</td>"
            f"<td>{attempts}</td><td>{details}</td></tr>"
        )
    return "\n".join(rows) + "</table>"
