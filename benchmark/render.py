"""From the store to the table: each row's cells read from its stages' results, then the table
files (benchmark/tables.py: markdown, LaTeX, JSON) and the figures (benchmark/figures.py).
An HTML report of a whole profile would be one more renderer beside these, called from `render`.
"""
from __future__ import annotations

from pathlib import Path

from benchmark.figures import table_figures
from benchmark.stages import StageGraph, select
from benchmark.store import Store

# Where metrics.evaluate puts the per-frame-index detection scores: {"mAP": [...], "mIoU": [...]} in percent
PER_FRAME_KEY = "det.per_frame"


def collect(graph: StageGraph, store: Store) -> tuple[dict, dict, list[tuple[str, int, int]]]:
    """(cells[row][column id] in the paper's units, extra[row] (stage hashes, per-frame curves),
    test-set sizes [(dataset, videos, frames)])."""
    spec = graph.table
    cells, extra, sizes = {}, {}, {}
    for plan in graph.rows:
        row_cells = {}
        gen = store.result(plan.generate) if plan.generate else None
        ts = store.result(plan.testset) if plan.testset else None
        if ts:
            sizes[plan.testset] = (select(plan.cfg, "data.name", ""), int(ts["num_videos"]), int(ts["num_frames"]))
        evals = {det: store.result(h) for det, h in plan.evaluate.items()}
        for c in spec.columns:
            if c.source == "generate":
                row_cells[c.id] = efficiency(c, gen)
            else:
                res = evals.get(spec.detector_of(plan.row, c))
                v = select((res or {}).get("metrics", {}), c.key, None)
                row_cells[c.id] = float(v) * c.scale if isinstance(v, (int, float)) else None
        cells[plan.row.name] = row_cells
        per_frame = {det: select((r or {}).get("metrics", {}), PER_FRAME_KEY, None) for det, r in evals.items()}
        extra[plan.row.name] = {"stages": {"testset": plan.testset, "train": plan.train, "generate": plan.generate,
                                           "evaluate": plan.evaluate},
                                "per_frame": {k: v for k, v in per_frame.items() if v}}
    return cells, extra, list(dict.fromkeys(sizes.values()))


def protocol_notes(graph: StageGraph, store: Store) -> list[str]:
    """Caption sentences naming the metric protocols the table's numbers were made with."""
    if not any(c.key.startswith("fid.") for c in graph.table.columns):
        return []
    fid = set()
    for plan in graph.rows:
        for h in plan.evaluate.values():
            res = store.result(h)
            value = select((res or {}).get("metrics", {}), "fid.preprocessing", None)
            if value:
                fid.add(str(value))
    return [f"FID preprocessing: {', '.join(sorted(fid))} (metrics.fid.protocol)"] if fid else []


def efficiency(c, gen: dict | None) -> float | None:
    """Table I's measured columns, from the generate stage: hours for `per_videos` videos; params in M."""
    if not gen:
        return None
    if c.key == "hours":
        if not gen.get("num_videos") or gen.get("seconds") is None:
            return None
        per = c.per_videos or gen["num_videos"]
        # a resumed generate stage times only the videos it made itself: its seconds_per_video
        spv = gen.get("seconds_per_video")
        spv = float(spv) if spv is not None else float(gen["seconds"]) / int(gen["num_videos"])
        return spv * per / 3600.0
    if c.key == "params_m":
        return float(gen["num_params"]) / 1e6 if gen.get("num_params") is not None else None
    v = gen.get(c.key)
    return float(v) * c.scale if isinstance(v, (int, float)) else None


def render(graph: StageGraph, store: Store, out_dir: Path, *, fake: bool = False, figures: bool = True) -> dict[str, Path]:
    from benchmark.tables import caption_text, protocol_text, render_table
    spec = graph.table
    cells, extra, sizes = collect(graph, store)
    description = str(select(graph.render.run_cfg, "benchmark.description", graph.profile))
    protocol = protocol_text([graph.stages[p.generate].run_cfg if p.generate in graph.stages else p.cfg
                              for p in graph.rows if p.cfg])
    caption = caption_text(spec, description=description, sizes=sizes, fake=fake,
                           notes=[protocol, *protocol_notes(graph, store)])
    outputs = render_table(spec, cells, caption=caption, out_dir=out_dir,
                           profile=graph.profile, fake=fake, extra=extra)
    if figures:
        outputs.update(table_figures(graph, store, out_dir, extra, note=("FAKE RUNNER: " if fake else "") + description))
    return outputs


