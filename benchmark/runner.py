"""The runner loop: expand a table, run its pending stages in dependency order, render it.

`run_table("III", resolver, runner)` is the whole job of `python -m benchmark.run table=III`.
Finished stages (runs/<hash>/DONE) are never recomputed, so rerunning an interrupted command
resumes it; a stage that was interrupted is rerun in its own folder (the trainer resumes from its
checkpoints there).

Launchers: `local` runs the pending stages here, one after the other; `slurm` submits them as job
arrays (slurm/launch.py; each job runs `run_stage`: one stage by hash, loaded from its folder,
through the same `_execute` as the local loop) and by default waits and renders; `debug` is the
same submission path with submitit's in-process DebugExecutor (tests, debugging).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import yaml

from tqdm.auto import tqdm

from ablations.registry import TableSpec, load_table
from benchmark.config import missing_paths
from benchmark.executors import StageRunner
from benchmark.stages import KINDS, DictResolver, Stage, StageGraph, expand, get_key
from benchmark.stages import stage_hash as stage_hash_of
from benchmark.store import CONFIG, RUN_CONFIG, STAGE, Store, atomic_write_json, atomic_write_yaml

LAUNCHERS = ("local", "slurm", "debug")
# Stage kinds whose runner method is an accelerate training loop: with gpus_per_task > 1 in the
# cluster config, that method runs under `accelerate launch` with one process per GPU.
ACCELERATE_METHODS = {"train": "run_train", "ctrlv_bbox": "run_ctrlv_train", "ctrlv_box2video": "run_ctrlv_train"}
# Where metrics.evaluate puts the per-frame-index detection scores: {"mAP": [...], "mIoU": [...]} in percent
PER_FRAME_KEY = "det.per_frame"


@dataclass
class TableRun:
    graph: StageGraph
    executed: list[str] = field(default_factory=list)     # hashes run by this call
    outputs: dict[str, Path] = field(default_factory=dict)  # md / tex / json / figures
    results_dir: Path | None = None
    launch: object | None = None      # slurm.launch.LaunchResult (launcher slurm / debug)


class StagesFailed(RuntimeError):
    """Stages that ended without a result on the cluster (each named with its job and log)."""


def run_table(table: str | TableSpec, cfg, runner: StageRunner, launcher: str = "local", *,
              store: str | Path | Store = "runs", results: str | Path = "results", rows: Sequence[str] | None = None,
              dry_run: bool = False, echo: Callable[[str], None] = print, figures: bool = True,
              cluster: dict | None = None, wait: bool = True) -> TableRun:
    """Run one table. `cfg` is a resolver (benchmark.config.HydraResolver) or a resolved base dict.

    launcher slurm / debug: `cluster` is the cluster config (slurm.config.load_cluster; default:
    configs/slurm/default.yaml); `wait=False` submits and returns, and a render job draws the table
    once every job ended.
    """
    spec = table if isinstance(table, TableSpec) else load_table(table)
    spec = spec.select(rows)
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r} is unknown; valid: {', '.join(LAUNCHERS)}")
    resolver = cfg if hasattr(cfg, "resolve") else DictResolver(cfg)
    store = store if isinstance(store, Store) else Store(store)
    graph = expand(spec, resolver)

    problems = missing_paths((p.row.name, p.cfg) for p in graph.rows if p.cfg is not None)
    if dry_run:
        echo(graph.format(store.is_done, store.root))
        if launcher != "local":
            echo(_format_arrays(graph, store))
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
    fake = bool(getattr(runner, "is_fake", False))
    out_dir = Path(results) / (graph.profile + ("-fake" if fake else ""))
    run.results_dir = out_dir
    if launcher == "local":
        bar = tqdm(pending, desc=f"table {spec.name}", unit="stage", file=sys.stderr)
        for stage in bar:
            bar.set_postfix_str(f"{stage.kind} {stage.hash}")
            _execute(stage, graph, store, runner, echo)
            run.executed.append(stage.hash)
        bar.close()
    elif pending:
        wait = wait or launcher == "debug"          # the debug executor runs everything here anyway
        run.launch = _launch(graph, store, runner, launcher, cluster, wait, echo, out_dir, fake, figures)
        run.executed = [h for h in run.launch.submitted if store.is_done(h)]
        if not wait:
            return run

    run.outputs = render(graph, store, out_dir, fake=fake, figures=figures)
    for k, p in run.outputs.items():
        echo(f"wrote {k}: {p}")
    failed = run.launch.failed if run.launch is not None else []
    if failed:
        raise StagesFailed(f"table {spec.name}: {len(failed)} stage(s) ended without a result (the table above "
                           f"shows n/a for them; the next benchmark.run submits them again):\n  " + "\n  ".join(
                               f"{graph.stages[o.key].kind} {o.key}: job {o.job_id} {o.state}"
                               f"{' (' + o.detail + ')' if o.detail else ''}; log {o.log}" for o in failed))
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
        elif stage.kind in ("ctrlv_bbox", "ctrlv_box2video"):
            backbone = store.dir(stage.deps[0]) if stage.deps else None   # Box2Video: the backbone's last epoch
            res = runner.run_ctrlv_train(stage, cfg, backbone, out)
        elif stage.kind == "generate" and stage.params.get("ctrlv"):
            cv = stage.params["ctrlv"]
            res = runner.run_generate_ctrlv(stage, cfg, store.dir(cv["bbox"]), store.dir(cv["box2video"]), out,
                                            test_clips=store.dir(_dep_of(stage, graph, "testset")))
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


# ------------------------------------------------------------------------------------ on a cluster
def _launch(graph: StageGraph, store: Store, runner, launcher: str, cluster: dict | None, wait: bool, echo,
            out_dir: Path, fake: bool, figures: bool):
    """The pending stages as job arrays (slurm/launch.py); each job runs `run_stage` by hash."""
    from slurm.config import kind_settings, load_cluster
    from slurm.launch import Work, launch
    cluster = cluster if cluster is not None else load_cluster("default")
    root = store.root.resolve()
    if launcher == "slurm":
        from slurm.records import QueueUnavailable, slurm_available
        why = slurm_available()
        if why:
            raise QueueUnavailable(f"launcher=slurm: no SLURM cluster answers here ({why}); use launcher=local, or "
                               f"start a test cluster with slurm/start-local-slurm.sh (docs/slurm.md)")
    accel = cluster.get("accelerate") or {}

    def processes(kind: str) -> int:   # one process per GPU for the kinds that train with accelerate
        return max(1, int(kind_settings(cluster, kind).get("gpus_per_task") or 0)) if kind in ACCELERATE_METHODS else 1

    works = [Work(s.hash, s.kind, run_stage, (str(root), s.hash, runner, processes(s.kind), accel),
                  s.deps, store.dir(s.hash), label=f"{s.kind} {s.hash} [{s.describe()}]")
             for s in graph.pending(store.is_done)]
    render_work = Work(f"render-{graph.render.hash}", "render", _render_job,
                       (graph, str(root), str(Path(out_dir).resolve()), fake, figures), label=f"render table {graph.table.name}")
    folder = Path(cluster.get("folder") or root / ".slurm")
    return launch(works, is_done=store.is_done, cluster=cluster, executor=launcher, folder=folder,
                  chdir=cluster.get("chdir") or os.getcwd(), pythonpath=Path(__file__).resolve().parents[1],
                  wait=wait, kind_order=KINDS, after=render_work, echo=echo,
                  prepare=lambda h: prepare_stage(store, graph.stages[h]))


def prepare_stage(store: Store, stage: Stage) -> Path:
    """What a job needs to run the stage by hash: run_config.yaml, stage_config.yaml, and stage.json with
    kind, deps, params, rows and the hashed config (attempts are added by the job's store.begin).

    The identity is read back from stage.json, not config.yaml: a training stage's folder is the
    trainer's run folder, and the trainer writes its own config.yaml there.
    """
    d = store.dir(stage.hash)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(d / CONFIG, stage.config)
    atomic_write_yaml(d / RUN_CONFIG, stage.run_cfg)
    info = json.loads((d / STAGE).read_text()) if (d / STAGE).exists() else {}
    info.update(kind=stage.kind, hash=stage.hash, deps=list(stage.deps), params=stage.params, rows=list(stage.rows),
                config=stage.config)
    atomic_write_json(d / STAGE, info)
    return d


def load_stage(store: Store, stage_hash: str) -> Stage:
    """The stage saved in runs/<hash>/ by prepare_stage; its config must still hash to its name."""
    d = store.dir(stage_hash)
    try:
        info = json.loads((d / STAGE).read_text())
        run_cfg = yaml.safe_load((d / RUN_CONFIG).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{d}: the stage was not prepared for a job ({e.filename} is missing)") from e
    config = info.get("config")
    if config is None or stage_hash_of(info["kind"], config) != stage_hash:
        raise ValueError(f"{d / STAGE}: its config does not hash to {stage_hash} (the folder was edited, or "
                         f"prepared by another version); delete {d} and run again")
    return Stage(info["kind"], stage_hash, config, run_cfg, tuple(info.get("deps") or ()), info.get("params") or {},
                 list(info.get("rows") or []))


def run_stage(store_root: str, stage_hash: str, runner: StageRunner, processes: int = 1,
              accelerate: dict | None = None) -> str:
    """What one SLURM job runs: the stage `stage_hash` of the store, exactly as the local loop runs it.

    The job may be a requeued one (timeout, preemption): the stage resumes from what its folder holds.
    A training kind (ACCELERATE_METHODS) with `processes` > 1 runs under `accelerate launch`, one
    process per GPU.
    """
    store = Store(store_root)
    if store.is_done(stage_hash):
        print(f"stage {stage_hash} is already done")
        return stage_hash
    stage = load_stage(store, stage_hash)
    # _execute only needs the kind of each input (they are done, so their stage.json exists)
    kinds = {d: SimpleNamespace(kind=json.loads((store.dir(d) / STAGE).read_text())["kind"]) for d in stage.deps}
    if stage.kind in ACCELERATE_METHODS and processes > 1:
        runner = _MultiProcess(runner, ACCELERATE_METHODS[stage.kind], processes, accelerate or {})
    print(f"running {stage.kind} {stage.hash} [{stage.describe()}] rows {', '.join(stage.rows)}", flush=True)
    _execute(stage, SimpleNamespace(stages=kinds), store, runner, lambda m: print(m, flush=True))
    return stage_hash


class _MultiProcess:
    """The stage runner with one method (a training loop on accelerate) under `accelerate launch`
    (slurm/multigpu.py); the store is touched by this (parent) process only."""

    def __init__(self, inner: StageRunner, method: str, processes: int, accelerate: dict):
        self.inner, self.method, self.processes, self.accelerate = inner, method, processes, accelerate

    def __getattr__(self, name):          # only called for what this class does not define itself
        if name.startswith("__") or name in ("inner", "method", "processes", "accelerate"):
            raise AttributeError(name)
        if name != self.method:
            return getattr(self.inner, name)
        from slurm.multigpu import main_process_port, run_in_processes

        def launched(*args):
            return run_in_processes(getattr(self.inner, name), args, self.processes, args[-1],
                                    port=main_process_port(self.accelerate.get("main_process_port", "auto")),
                                    extra_args=self.accelerate.get("extra_args") or ())
        return launched


def _render_job(graph: StageGraph, store_root: str, out_dir: str, fake: bool, figures: bool) -> dict:
    """The render job of `benchmark.run ... --no-wait`: the table from whatever finished."""
    outputs = render(graph, Store(store_root), Path(out_dir), fake=fake, figures=figures)
    for k, p in outputs.items():
        print(f"wrote {k}: {p}")
    return {k: str(p) for k, p in outputs.items()}


def _format_arrays(graph: StageGraph, store: Store) -> str:
    """The dry-run view of launcher=slurm: which stages form which array, and what each waits for
    (jobs already queued are not looked up in a dry run)."""
    from slurm.plan import Item, plan_arrays
    arrays = plan_arrays([Item(s.hash, s.kind, s.deps) for s in graph.order()], store.is_done, {}, KINDS)
    lines = [f"job arrays ({len(arrays)}), each task waiting (afterok) for exactly the stages it needs:"]
    for a in arrays:
        lines.append(f"  {a.name:<16} {len(a.keys)} task(s)")
        lines += [f"    [{i}] {k}" + (f" after {', '.join(a.needs[k])}" if a.needs[k] else "")
                  for i, k in enumerate(a.keys)]
    return "\n".join(lines)


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
        # a resumed generate stage times only the videos it made itself: its seconds_per_video
        spv = gen.get("seconds_per_video")
        spv = float(spv) if spv is not None else float(gen["seconds"]) / int(gen["num_videos"])
        return spv * per / 3600.0
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
                                     min_score=float(fig_cfg.get("det_min_score", 0.5)),
                                     max_boxes=int(fig_cfg.get("det_max_boxes", 10)),
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
