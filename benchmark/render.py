"""From the store to the table: each row's cells read from its stages' results, then the table
files (benchmark/tables.py: markdown, LaTeX, JSON), the figures (benchmark/figures.py) and the
HTML report of the table (benchmark/report.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark import provenance
from benchmark.figures import table_figures
from benchmark.report import write_report
from benchmark.stages import StageGraph, select
from benchmark.store import Store
from data.atomic import sweep_temps

# Where metrics.evaluate puts the per-frame-index detection scores: {"mAP": [...], "mIoU": [...]} in percent
PER_FRAME_KEY = "det.per_frame"


def collect(
    graph: StageGraph, store: Store, step_costs: dict | None = None
) -> tuple[dict, dict, list[tuple[str, int, int]]]:
    """(cells[row][column id] in the paper's units, extra[row] (stage hashes, per-frame curves),
    test-set sizes [(dataset, videos, frames)]). `step_costs`: the `source: perf` columns' values per
    row (benchmark/perf/table_cost.py), measured by `render`."""
    spec = graph.table
    cells, extra, sizes = {}, {}, {}
    runs: dict[str, list[tuple[int | None, dict]]] = {}  # row -> [(seed, its cells)]
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
            elif c.source == "perf":
                v = ((step_costs or {}).get(plan.row.name) or {}).get(c.key)
                row_cells[c.id] = float(v) * c.scale if isinstance(v, (int, float)) else None
            else:
                res = evals.get(spec.detector_of(plan.row, c))
                v = select((res or {}).get("metrics", {}), c.key, None)
                row_cells[c.id] = float(v) * c.scale if isinstance(v, (int, float)) else None
        runs.setdefault(plan.row.name, []).append((plan.seed, row_cells))
        if not plan.first_seed:
            extra[plan.row.name]["stages"]["seeds"][str(plan.seed)] = _stages_of(plan)
            continue
        per_frame = {det: select((r or {}).get("metrics", {}), PER_FRAME_KEY, None) for det, r in evals.items()}
        extra[plan.row.name] = {
            "stages": {**_stages_of(plan), "seeds": {}},
            "per_frame": {k: v for k, v in per_frame.items() if v},
        }
        if step_costs and plan.row.name in step_costs:
            extra[plan.row.name]["step_cost"] = step_costs[plan.row.name]
        if plan.seed is None:
            del extra[plan.row.name]["stages"]["seeds"]
    for name, per_seed in runs.items():
        if len(per_seed) == 1 and per_seed[0][0] is None:
            cells[name] = per_seed[0][1]
            continue
        # several seeds: the table's number is the mean over seeds (None unless every seed has one)
        values = {c.id: [rc.get(c.id) for _, rc in per_seed] for c in spec.columns}
        cells[name] = {cid: (float(np.mean(v)) if all(x is not None for x in v) else None) for cid, v in values.items()}
        extra[name]["seeds"] = {
            "seeds": [sd for sd, _ in per_seed],
            "values": values,
            "std": {
                cid: (float(np.std(v, ddof=1)) if len(v) > 1 and all(x is not None for x in v) else None)
                for cid, v in values.items()
            },
        }
    return cells, extra, list(dict.fromkeys(sizes.values()))


def _stages_of(plan) -> dict:
    return {"testset": plan.testset, "train": plan.train, "generate": plan.generate, "evaluate": plan.evaluate}


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


def _step_cost_note(costs: dict) -> list[str]:
    from benchmark.perf.table_cost import caption_note

    note = caption_note(costs) if costs else None
    return [note] if note else []


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


def render(
    graph: StageGraph, store: Store, out_dir: Path, *, fake: bool = False, figures: bool = True
) -> dict[str, Path]:
    from benchmark.tables import caption_text, protocol_text, render_table, uncertainty_text

    spec = graph.table
    sweep_temps(out_dir, recursive=True)  # what a render killed mid-write left (live writers' stay)
    costs = {}
    if any(c.source == "perf" for c in spec.columns) and not fake:
        # the step-cost column: timed now, in this process, on the tiny model (benchmark/perf/table_cost.py)
        from benchmark.perf.table_cost import graph_step_costs

        costs = graph_step_costs(graph)
    cells, extra, sizes = collect(graph, store, costs)
    stats, uncertainty = cell_statistics(graph, store, extra)
    description = str(select(graph.render.run_cfg, "benchmark.description", graph.profile))
    protocol = protocol_text(
        [graph.stages[p.generate].run_cfg if p.generate in graph.stages else p.cfg for p in graph.rows if p.cfg]
    )
    made_by = provenance.summarize(
        store.stage_info(s.hash).get("provenance") for s in graph.order() if store.is_done(s.hash)
    )
    caption = caption_text(
        spec,
        description=description,
        sizes=sizes,
        fake=fake,
        notes=[
            protocol,
            *protocol_notes(graph, store),
            *_step_cost_note(costs),
            uncertainty_text(spec, uncertainty),
            provenance.footnote(made_by),
        ],
    )
    outputs = render_table(
        spec,
        cells,
        caption=caption,
        out_dir=out_dir,
        profile=graph.profile,
        fake=fake,
        extra=extra,
        provenance=made_by,
        stats=stats,
        uncertainty=uncertainty,
    )
    if figures:
        note = ("FAKE RUNNER: " if fake else "") + description
        figs = table_figures(graph, store, out_dir, extra, note=note)
        outputs.update(figs)
        # the HTML report shows the table, the figures and a few re-encoded videos (benchmark/report.py)
        outputs.update(
            write_report(graph, store, out_dir, json.loads(Path(outputs["json"]).read_text()), figs, note=note)
        )
    return outputs


def cell_statistics(graph: StageGraph, store: Store, extra: dict) -> tuple[dict, dict]:
    """(stats[row][column id], how the table shows uncertainty): each cell's bootstrap interval and paired
    difference to its baseline row (benchmark/intervals.py; per seed when the table runs several), its
    values over seeds, and the mark. Adds the per-frame bands to extra[row]["per_frame_band"]."""
    from benchmark.intervals import excludes_zero, table_intervals

    spec = graph.table
    ivs, bands, opts = table_intervals(graph, store)
    seeds = graph.seeds
    stats: dict[str, dict] = {}
    for row in spec.rows:
        per_seed = [ivs.get((row.name, sd), {}) for sd in seeds]
        if not any(per_seed):
            continue
        row_stats = {}
        for c in spec.columns:
            cells = [p.get(c.id) for p in per_seed]
            if not any(cells):
                continue
            diffs = [x["diff"] if x else None for x in cells]
            # the mark: every seed's paired interval excludes 0, all on the same side
            signs = {(d["low"] > 0) for d in diffs if excludes_zero(d)}
            mark = all(excludes_zero(d) for d in diffs) and len(signs) == 1
            st = {
                "interval": cells[0]["interval"] if cells[0] else None,
                "diff": diffs[0],
                "baseline": next((x["baseline"] for x in cells if x and x["baseline"]), None),
                "significant": mark,
            }
            if seeds != [None]:
                st["per_seed"] = [{"seed": sd, **(x or {})} for sd, x in zip(seeds, cells)]
            row_stats[c.id] = st
        stats[row.name] = row_stats
        if (row.name, seeds[0]) in bands and row.name in extra:
            extra[row.name]["per_frame_band"] = bands[(row.name, seeds[0])]
    show = bool(select(graph.render.run_cfg, "benchmark.intervals", True))
    uncertainty = {
        "show": show,
        "seeds": seeds,
        "bootstrap": opts,
        "baselines": [r for r in spec.compare_to if any(x.row.name == r for x in graph.rows)],
    }
    return stats, uncertainty
