"""The runner loop: expand a table, run its pending stages in dependency order, render it.

`run_table("III", resolver, runner)` is the whole job of `python -m benchmark.run table=III`.
Finished stages (runs/<hash>/DONE) are never recomputed, so rerunning an interrupted command
resumes it; a stage that was interrupted is rerun in its own folder (the trainer resumes from its
checkpoints there).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from ablations.registry import TableSpec, load_table
from benchmark.config import missing_paths
from benchmark.executors import StageRunner
from benchmark.stages import DictResolver, Stage, StageGraph, expand, get_key
from benchmark.store import Store, atomic_write_json

LAUNCHERS = ("local", "slurm")
# Where metrics.evaluate puts the per-frame-index detection scores: {"mAP": [...], "mIoU": [...]} in percent
PER_FRAME_KEY = "det.per_frame"


@dataclass
class TableRun:
    graph: StageGraph
    executed: list[str] = field(default_factory=list)     # hashes run by this call
    outputs: dict[str, Path] = field(default_factory=dict)  # md / tex / json / figures
    results_dir: Path | None = None


def run_table(table: str | TableSpec, cfg, runner: StageRunner, launcher: str = "local", *,
              store: str | Path | Store = "runs", results: str | Path = "results", rows: Sequence[str] | None = None,
              dry_run: bool = False, echo: Callable[[str], None] = print, figures: bool = True) -> TableRun:
    """Run one table. `cfg` is a resolver (benchmark.config.HydraResolver) or a resolved base dict."""
    spec = table if isinstance(table, TableSpec) else load_table(table)
    spec = spec.select(rows)
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r} is unknown; valid: {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and not dry_run:
        raise NotImplementedError("launcher=slurm is not yet implemented (SLURM issue 6); use launcher=local")
    resolver = cfg if hasattr(cfg, "resolve") else DictResolver(cfg)
    store = store if isinstance(store, Store) else Store(store)
    graph = expand(spec, resolver)

    problems = missing_paths((p.row.name, p.cfg) for p in graph.rows if p.cfg is not None)
    if dry_run:
        echo(graph.format(store.is_done, store.root))
        for line in problems:
            echo(f"missing: {line}")
        return TableRun(graph)
    if problems:
        raise FileNotFoundError(f"table {spec.name}: {len(problems)} path(s) the run needs are missing; nothing "
                                f"was started:\n  " + "\n  ".join(problems))

    run = TableRun(graph)
    for p in graph.rows:
        if p.unavailable:
            echo(f"table {spec.name} row {p.row.name}: {p.unavailable}")
    pending = graph.pending(store.is_done)
    echo(f"table {spec.name}: {len(graph.stages)} stages, {len(graph.stages) - len(pending)} cached, "
         f"{len(pending)} to run (store {store.root}/)")
    bar = tqdm(pending, desc=f"table {spec.name}", unit="stage", file=sys.stderr)
    for stage in bar:
        bar.set_postfix_str(f"{stage.kind} {stage.hash}")
        _execute(stage, graph, store, runner, echo)
        run.executed.append(stage.hash)
    bar.close()

    fake = bool(getattr(runner, "is_fake", False))
    out_dir = Path(results) / (graph.profile + ("-fake" if fake else ""))
    run.results_dir = out_dir
    run.outputs = render(graph, store, out_dir, fake=fake, figures=figures)
    for k, p in run.outputs.items():
        echo(f"wrote {k}: {p}")
    return run


# ------------------------------------------------------------------------------------ one stage
def _execute(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, echo) -> None:
    for d in stage.deps:
        if not store.is_done(d):
            raise RuntimeError(f"stage {stage.kind} {stage.hash} depends on {d}, which is not done")
    out = store.begin(stage)
    cfg = stage.run_cfg
    try:
        if stage.kind == "testset":
            res = runner.run_testset(stage, cfg, out)
        elif stage.kind == "train":
            init_from = store.dir(stage.deps[0]) if stage.deps else None
            res = runner.run_train(stage, cfg, init_from, out)
        elif stage.kind == "generate":
            ckpt = stage.params.get("checkpoint")
            res = runner.run_generate(stage, cfg, store.dir(ckpt) if ckpt else None, out,
                                      test_clips=store.dir(_dep_of(stage, graph, "testset")))
        elif stage.kind == "evaluate":
            gen = store.result(_dep_of(stage, graph, "generate"))
            real = store.result(_dep_of(stage, graph, "testset"))
            metrics = runner.run_evaluate(stage, cfg, Path(gen["frames"]), out, real_dir=Path(real["frames"]))
            if not isinstance(metrics, dict):
                raise TypeError(f"run_evaluate returned {type(metrics).__name__}, expected the metrics dict")
            atomic_write_json(out / "metrics.json", metrics)
            res = {"metrics": metrics, "metrics_file": out / "metrics.json"}
        else:
            raise ValueError(f"unknown stage kind {stage.kind!r}")
    except BaseException:
        echo(f"stage {stage.kind} {stage.hash} failed (rows: {', '.join(stage.rows)}); its folder {out} is kept "
             f"and the next run retries it")
        raise
    store.commit(stage, res)


def _dep_of(stage: Stage, graph: StageGraph, kind: str) -> str:
    for d in stage.deps:
        if graph.stages[d].kind == kind:
            return d
    raise KeyError(f"stage {stage.kind} {stage.hash} has no {kind} dependency")


# ------------------------------------------------------------------------------------ results -> table
def collect(graph: StageGraph, store: Store) -> tuple[dict, dict, list[tuple[str, int, int]]]:
    """(cells[row][column id] in the paper's units, extra[row] (stage hashes, per-frame curves),
    test-set sizes [(dataset, videos, frames)])."""
    spec = graph.table
    cells, extra, sizes = {}, {}, {}
    for plan in graph.rows:
        if plan.unavailable:
            continue
        row_cells = {}
        gen = store.result(plan.generate) if plan.generate else None
        ts = store.result(plan.testset) if plan.testset else None
        if ts:
            sizes[plan.testset] = (get_key(plan.cfg, "data.name", ""), int(ts["num_videos"]), int(ts["num_frames"]))
        evals = {det: store.result(h) for det, h in plan.evaluate.items()}
        for c in spec.columns:
            if c.source == "generate":
                row_cells[c.id] = _efficiency(c, gen)
            else:
                res = evals.get(spec.detector_of(plan.row, c))
                v = get_key((res or {}).get("metrics", {}), c.key, None)
                row_cells[c.id] = float(v) * c.scale if isinstance(v, (int, float)) else None
        cells[plan.row.name] = row_cells
        per_frame = {det: get_key((r or {}).get("metrics", {}), PER_FRAME_KEY, None) for det, r in evals.items()}
        extra[plan.row.name] = {"stages": {"testset": plan.testset, "train": plan.train, "generate": plan.generate,
                                           "evaluate": plan.evaluate},
                                "per_frame": {k: v for k, v in per_frame.items() if v}}
    return cells, extra, list(dict.fromkeys(sizes.values()))


def _efficiency(c, gen: dict | None) -> float | None:
    """Table I's measured columns, from the generate stage: hours for `per_videos` videos; params in M."""
    if not gen:
        return None
    if c.key == "hours":
        if not gen.get("num_videos") or gen.get("seconds") is None:
            return None
        per = c.per_videos or gen["num_videos"]
        return float(gen["seconds"]) / int(gen["num_videos"]) * per / 3600.0
    if c.key == "params_m":
        return float(gen["num_params"]) / 1e6 if gen.get("num_params") is not None else None
    v = gen.get(c.key)
    return float(v) * c.scale if isinstance(v, (int, float)) else None


def render(graph: StageGraph, store: Store, out_dir: Path, *, fake: bool = False, figures: bool = True) -> dict[str, Path]:
    from benchmark.tables import caption_text, render_table
    spec = graph.table
    cells, extra, sizes = collect(graph, store)
    description = str(get_key(graph.render.run_cfg, "benchmark.description", graph.profile))
    caption = caption_text(spec, description=description, sizes=sizes, fake=fake)
    unavailable = {p.row.name: p.unavailable for p in graph.rows if p.unavailable}
    outputs = render_table(spec, cells, caption=caption, out_dir=out_dir, unavailable=unavailable,
                           profile=graph.profile, fake=fake, extra=extra)
    if figures:
        outputs.update(_figures(graph, store, out_dir, extra, note=("FAKE RUNNER: " if fake else "") + description))
    return outputs


def _figures(graph: StageGraph, store: Store, out_dir: Path, extra: dict, note: str = "") -> dict[str, Path]:
    """Every figure's title ends with the profile's note (smoke: tiny random models ...)."""
    from benchmark import plots
    spec, stem = graph.table, f"table_{graph.table.name}"
    note = f"\n{note}" if note else ""
    fig_cfg = get_key(graph.render.run_cfg, "benchmark.figures", {}) or {}
    out: dict[str, Path] = {}
    logs = {}
    for p in graph.rows:
        paths = []
        for h in p.train:
            res = store.result(h)
            if res and res.get("log") and Path(res["log"]).exists():
                paths.append(res["log"])
        if paths:
            logs[p.row.name] = paths
    made = plots.plot_loss_curves(logs, out_dir / f"{stem}_loss.png", title=f"Table {spec.name}: training losses{note}")
    if made:
        out["loss_curves"] = made
    primary = spec.detector
    per_frame = {}
    for row, ex in extra.items():
        pf = ex.get("per_frame") or {}
        det = primary if primary in pf else next(iter(pf), None)
        if det:
            per_frame[row if len(pf) == 1 or det == primary else f"{row} ({det})"] = pf[det]
    made = plots.plot_per_frame(per_frame, out_dir / f"{stem}_per_frame.png",
                                title=f"Table {spec.name}: detection metrics per frame index{note}")
    if made:
        out["per_frame"] = made
    grid = _grid_inputs(graph, store, int(fig_cfg.get("max_rows", 4)))
    if grid:
        ts, gens, dets = grid
        made = plots.plot_frame_grid(ts["frames"], gens, list(ts.get("clips", []))[: int(fig_cfg.get("grid_clips", 2))],
                                     out_dir / f"{stem}_frames.png", n_frames=int(fig_cfg.get("grid_frames", 3)),
                                     boxes_dir=ts.get("boxes"), detections_dirs=dets,
                                     title=f"Table {spec.name}: real (dataset boxes) vs generated (detections){note}")
        if made:
            out["frames"] = made
    return out


def _grid_inputs(graph: StageGraph, store: Store, max_rows: int):
    """The first test set with results, and the generated frame folders of the rows that use it."""
    plans = [p for p in graph.rows if p.generate and store.result(p.generate)]
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
