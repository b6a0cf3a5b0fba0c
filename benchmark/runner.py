"""The runner loop: expand a table, run its pending stages in dependency order, render it.

`run_table("III", resolver, runner)` is the whole job of `python -m benchmark.run table=III`.
Finished stages (runs/<hash>/DONE) are never recomputed, so rerunning an interrupted command
resumes it; a stage that was interrupted is rerun in its own folder (the trainer resumes from its
checkpoints there).

Launchers: `local` runs the pending stages here, one after the other; `slurm` submits them as job
arrays (slurm/launch.py; each job runs `run_stage`: one stage by hash, loaded from its folder,
through the same `_execute` as the local loop) and by default waits and renders; `debug` is the
same submission path with submitit's in-process DebugExecutor (tests, debugging).

Shards (`benchmark.shards: N`, benchmark/shards.py): a generate or evaluate stage is split into N
shards of test clips, run locally one after the other (or one worker per GPU) or as N array tasks
plus a merge task on SLURM; the merge gives the result of the unsharded stage.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import yaml
from tqdm.auto import tqdm

from ablations.registry import TableSpec, load_table
from benchmark import provenance
from benchmark import shards as shards_mod
from benchmark.config import ConfigError, missing_paths
from benchmark.executors import StageRunner
from benchmark.shards import Shard, stage_shards
from benchmark.stages import KINDS, DictResolver, Stage, StageGraph, expand, get_key
from benchmark.stages import stage_hash as stage_hash_of
from benchmark.store import RUN_CONFIG, STAGE, Store, atomic_write_json
from data.atomic import make_temp_file
from data.cli import MissingFile, UserError

LAUNCHERS = ("local", "slurm", "debug")
# Stage kinds whose runner method is an accelerate training loop: with gpus_per_task > 1 in the
# cluster config, that method runs under `accelerate launch` with one process per GPU.
ACCELERATE_METHODS = {"train": "run_train", "ctrlv_bbox": "run_ctrlv_train", "ctrlv_box2video": "run_ctrlv_train"}
# The SLURM task that merges the shards of a split stage (configs/slurm kinds.merge: a CPU, no GPU).
MERGE_KIND = "merge"
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
    check_values(graph)                 # types and ranges of every row's config, before anything runs

    problems = missing_paths((p.row.name, p.cfg, spec.detectors_for(p.row))
                             for p in graph.rows if p.cfg is not None)
    sharded = [s for s in graph.order() if stage_shards(s) > 1]     # checks benchmark.shards of every stage
    if runner is not None and not dry_run:
        for s in sharded:
            _check_can_shard(runner, s, stage_shards(s))
    mode = provenance.check_mode(get_key(resolver.base, "benchmark.provenance", "record"))
    if dry_run:
        echo(graph.format(store.is_done, store.root, notes=provenance.flag_stages(graph, store)))
        if launcher != "local":
            echo(_format_arrays(graph, store))
        for line in problems:
            echo(f"missing: {line}")
        return TableRun(graph)
    if problems:
        raise MissingFile(f"table {spec.name}: {len(problems)} path(s) the run needs are missing; nothing "
                          f"was started:\n  " + "\n  ".join(problems))

    run = TableRun(graph)
    for p in graph.rows:
        if p.unavailable:
            echo(f"table {spec.name} row {p.row.name}: {p.unavailable}")
    check_finished(graph, store, echo)   # a damaged finished stage is set aside and recomputed
    provenance.apply(graph, store, mode, echo)   # made by other code: flagged (strict: recomputed)
    pending = graph.pending(store.is_done)
    echo(f"table {spec.name}: {len(graph.stages)} stages, {len(graph.stages) - len(pending)} cached, "
         f"{len(pending)} to run (store {store.root}/)")
    fake = bool(getattr(runner, "is_fake", False))
    out_dir = Path(results) / (graph.profile + ("-fake" if fake else ""))
    run.results_dir = out_dir
    if pending:
        check_writable(out_dir, "results")      # before the first stage, not after the last
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


def check_writable(folder: Path, option: str) -> None:
    """`folder` exists (made if need be) and a file can be created in it; else a user error naming it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        make_temp_file(Path(folder) / ".write-check").unlink()
    except OSError as e:
        raise UserError(f"{option}={Path(folder).parent}: the output folder {folder} is not writable "
                        f"({e.strerror or e}); nothing was started") from e


# ------------------------------------------------------------------------------------ one stage
def _execute(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, echo, *,
             merge_only: bool = False) -> None:
    """Run a stage and commit it. A stage split into shards (benchmark.shards > 1, benchmark/shards.py)
    runs its unfinished shards (here, or one worker per GPU), then merges them; `merge_only` (the
    SLURM merge task, whose shards ran as array tasks) refuses to run a missing shard itself."""
    _check_inputs_done(stage, store)
    n = stage_shards(stage)
    if n > 1:
        _check_can_shard(runner, stage, n)
    with store.lock(stage.hash, echo):
        if store.is_done(stage.hash):           # another process ran it while this one waited
            echo(f"stage {stage.kind} {stage.hash} was done by another process")
            return
        _execute_locked(stage, graph, store, runner, echo, n, merge_only)


def check_values(graph: StageGraph) -> None:
    """Every row's resolved config against trainers/config_schema.py: one ConfigError naming each bad
    key, its value, what is allowed and the rows that have it."""
    from trainers.config_schema import problems
    found: dict[str, list[str]] = {}
    for p in graph.rows:
        if p.cfg is not None:
            for line in problems(p.cfg):
                found.setdefault(line, []).append(p.row.name)
    if found:
        raise ConfigError("\n".join(f"table {graph.table.name}: {line}  [rows: {', '.join(rows)}]"
                                     for line, rows in found.items()))


def check_finished(graph: StageGraph, store: Store, echo=print) -> list[str]:
    """Check each finished stage of the graph against its manifest before it is reused: names and
    sizes (one stat per file, so every rerun of a paper table stays fast; truncated, deleted, added
    and replaced-by-another-size files are what goes wrong in practice); `benchmark.status --verify`
    also compares the content hashes (benchmark/manifest.py). A damaged one (a file missing, added or changed) is moved to
    `<store>/.damaged/` and so recomputed; the message names the damaged files. A stage finished
    before manifests existed is trusted, with a warning: recomputing every old stage (days of
    training on the paper profile) for a check that was never possible would cost more than it saves.
    Returns the hashes set aside."""
    damaged_hashes = []
    for s in graph.order():
        if not store.is_done(s.hash):
            continue
        damage = store.verify(s.hash, hashes=False)
        if damage is None:
            echo(f"warning: stage {s.kind} {s.hash} finished before stages had manifests: its files cannot be "
                 f"checked and are trusted (delete {store.dir(s.hash)} to recompute it)")
            continue
        if not damage:
            continue
        with store.lock(s.hash, echo):
            damage = store.verify(s.hash, hashes=False) if store.is_done(s.hash) else []   # another run may have acted
            if not damage:
                continue
            moved = store.set_aside(s.hash)
        shown = "; ".join(damage[:5]) + (f"; ... {len(damage) - 5} more" if len(damage) > 5 else "")
        echo(f"stage {s.kind} {s.hash} (rows: {', '.join(s.rows)}) is damaged since it finished: {shown}. "
             f"Its folder was moved to {moved} and the stage is recomputed")
        damaged_hashes.append(s.hash)
    return damaged_hashes


def _check_inputs_done(stage: Stage, store: Store) -> None:
    for d in stage.deps:
        if not store.is_done(d):
            raise RuntimeError(f"stage {stage.kind} {stage.hash} depends on {d}, which is not done")


def _execute_locked(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, echo, n: int,
                    merge_only: bool) -> None:
    out = store.begin(stage)
    try:
        if n == 1:
            res = _run(stage, graph, store, runner, out)
        else:
            todo = [i for i in range(n) if not store.shard_done(stage.hash, i, n)]
            if todo and merge_only:
                raise RuntimeError(f"stage {stage.kind} {stage.hash}: shard(s) {todo} of {n} have no record "
                                   f"({store.dir(stage.hash) / 'shards'}); their array tasks did not finish")
            if todo:
                _run_shards(stage, graph, store, runner, todo, n, echo)
            res = _merge(stage, graph, store, runner, out, [store.shard_result(stage.hash, i, n) for i in range(n)])
    except BaseException as e:
        try:
            store.fail(stage.hash, e)         # benchmark.status shows it as failed, with this summary
        except OSError:                       # (a full disk must not hide the stage's own error)
            pass
        what = "was interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        echo(f"stage {stage.kind} {stage.hash} {what} (rows: {', '.join(stage.rows)}); its folder {out} is kept "
             f"and the next run retries it")
        raise
    store.commit(stage, res)


def _run(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, out: Path, shard: Shard | None = None):
    """The runner's method for the stage's kind; with `shard`, only that shard's part (its record)."""
    cfg = stage.run_cfg
    kw = {} if shard is None else {"shard": shard}
    if stage.kind == "testset":
        return runner.run_testset(stage, cfg, out)
    if stage.kind == "train":
        init_from = store.dir(stage.deps[0]) if stage.deps else None
        return runner.run_train(stage, cfg, init_from, out)
    if stage.kind in ("ctrlv_bbox", "ctrlv_box2video"):
        backbone = store.dir(stage.deps[0]) if stage.deps else None   # Box2Video: the backbone's last epoch
        return runner.run_ctrlv_train(stage, cfg, backbone, out)
    if stage.kind == "generate" and stage.params.get("ctrlv"):
        cv = stage.params["ctrlv"]
        return runner.run_generate_ctrlv(stage, cfg, store.dir(cv["bbox"]), store.dir(cv["box2video"]), out,
                                         test_clips=store.dir(_dep_of(stage, graph, "testset")), **kw)
    if stage.kind == "generate":
        ckpt = stage.params.get("checkpoint")
        return runner.run_generate(stage, cfg, store.dir(ckpt) if ckpt else None, out,
                                   test_clips=store.dir(_dep_of(stage, graph, "testset")), **kw)
    if stage.kind == "evaluate":
        videos_dir, real_dir = _evaluate_inputs(stage, graph, store)
        metrics = runner.run_evaluate(stage, cfg, videos_dir, out, real_dir=real_dir, **kw)
        if shard is not None:
            return metrics                  # the shard's record, not metrics yet
        return _evaluate_result(metrics, out)
    raise ValueError(f"unknown stage kind {stage.kind!r}")


def _evaluate_inputs(stage: Stage, graph: StageGraph, store: Store) -> tuple[Path, Path]:
    gen = store.result(_dep_of(stage, graph, "generate"))
    real = store.result(_dep_of(stage, graph, "testset"))
    return Path(gen["frames"]), Path(real["frames"])


def _evaluate_result(metrics, out: Path) -> dict:
    if not isinstance(metrics, dict):
        raise TypeError(f"run_evaluate returned {type(metrics).__name__}, expected the metrics dict")
    atomic_write_json(out / "metrics.json", metrics)
    return {"metrics": metrics, "metrics_file": out / "metrics.json"}


def _check_can_shard(runner, stage: Stage, n: int) -> None:
    method = f"merge_{stage.kind}"
    if not callable(getattr(runner, method, None)):
        raise ConfigError(f"benchmark.shards={n}: the stage runner {type(runner).__name__} cannot split {stage.kind} "
                          f"stages (it has no {method} method); set benchmark.shards=1")


def run_shard(store: Store, stage: Stage, graph, runner: StageRunner, index: int, count: int) -> dict:
    """Shard `index` of `count` of the stage: its part of the work, then its record (skipped when
    the record exists). Touches nothing but its clips' outputs and its own shard folder, so shards
    may run at the same time."""
    if store.shard_done(stage.hash, index, count):
        return store.shard_result(stage.hash, index, count)
    folder = store.shard_dir(stage.hash, index, count)
    folder.mkdir(parents=True, exist_ok=True)
    res = _run(stage, graph, store, runner, store.dir(stage.hash), Shard(index, count, folder))
    store.commit_shard(stage.hash, index, count, res)
    return res


def _run_shards(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, todo: list[int], n: int,
                echo) -> None:
    """The unfinished shards: one worker process per GPU when there are several, else here in turn."""
    devices = shards_mod.local_devices()
    if devices is None:
        for i in todo:
            echo(f"{stage.kind} {stage.hash}: shard {i + 1} of {n}")
            run_shard(store, stage, graph, runner, i, n)
        return
    prepare_stage(store, stage)       # what a worker loads the stage from (run_stage by hash)
    root = str(store.root.resolve())
    shards_mod.run_workers([(f"{stage.kind} {stage.hash} shard {i + 1}/{n}", run_stage, (root, stage.hash, runner,
                                                                                        1, None, i),
                             store.shard_dir(stage.hash, i, n)) for i in todo], devices, echo)


def _merge(stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, out: Path, parts: list[dict]) -> dict:
    """The stage's result from its shards' records (the runner's merge_<kind>), as the unsharded
    stage returns it."""
    cfg = stage.run_cfg
    if stage.kind == "generate":
        return runner.merge_generate(stage, cfg, out, parts, test_clips=store.dir(_dep_of(stage, graph, "testset")))
    videos_dir, real_dir = _evaluate_inputs(stage, graph, store)
    return _evaluate_result(runner.merge_evaluate(stage, cfg, out, parts, videos_dir=videos_dir, real_dir=real_dir),
                            out)


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

    works = stage_works(graph, store, runner, processes, accel)
    render_work = Work(f"render-{graph.render.hash}", "render", _render_job,
                       (graph, str(root), str(Path(out_dir).resolve()), fake, figures), label=f"render table {graph.table.name}")
    folder = Path(cluster.get("folder") or root / ".slurm")
    return launch(works, is_done=lambda k: _work_done(store, k), cluster=cluster, executor=launcher, folder=folder,
                  chdir=cluster.get("chdir") or os.getcwd(), pythonpath=Path(__file__).resolve().parents[1],
                  wait=wait, kind_order=KINDS + (MERGE_KIND,), after=render_work, echo=echo,
                  prepare=lambda k: prepare_stage(store, graph.stages[_split_key(k)[0]]))


def stage_works(graph: StageGraph, store: Store, runner, processes=lambda kind: 1, accel: dict | None = None):
    """The pending stages as works (one SLURM task each). A stage split into N shards becomes N works
    `<hash>:<i>/<N>` of its own kind and one work `<hash>` of kind `merge` waiting for them, so whatever
    needs the stage waits for its merge (the plan leaves out shards already recorded: `_work_done`)."""
    from slurm.launch import Work
    root = str(store.root.resolve())
    works = []
    for s in graph.pending(store.is_done):
        n = stage_shards(s)
        label = f"{s.kind} {s.hash} [{s.describe()}]"
        if n == 1:
            works.append(Work(s.hash, s.kind, run_stage, (root, s.hash, runner, processes(s.kind), accel or {}),
                              s.deps, store.dir(s.hash), label=label))
            continue
        keys = [shard_key(s.hash, i, n) for i in range(n)]
        works += [Work(keys[i], s.kind, run_stage, (root, s.hash, runner, 1, None, i), s.deps,
                       store.shard_dir(s.hash, i, n), label=f"{label} shard {i + 1}/{n}") for i in range(n)]
        works.append(Work(s.hash, MERGE_KIND, run_stage, (root, s.hash, runner, 1, None, None, True),
                          tuple(keys), store.dir(s.hash), label=f"{label} merge of {n} shards"))
    return works


def shard_key(stage_hash: str, index: int, count: int) -> str:
    return f"{stage_hash}:{index}/{count}"


def _split_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """work key -> (stage hash, (shard, count) or None)."""
    if ":" not in key:
        return key, None
    h, rest = key.split(":", 1)
    i, n = rest.split("/")
    return h, (int(i), int(n))


def _work_done(store: Store, key: str) -> bool:
    h, shard = _split_key(key)
    return store.is_done(h) or (shard is not None and store.shard_done(h, *shard))


def prepare_stage(store: Store, stage: Stage) -> Path:
    """What a job needs to run the stage by hash (Store.prepare; attempts are added by the job's store.begin)."""
    return store.prepare(stage)


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
              accelerate: dict | None = None, shard: int | None = None, merge_only: bool = False) -> str:
    """What one SLURM job runs: the stage `stage_hash` of the store, exactly as the local loop runs it.

    The job may be a requeued one (timeout, preemption): the stage resumes from what its folder holds.
    A training kind (ACCELERATE_METHODS) with `processes` > 1 runs under `accelerate launch`, one
    process per GPU. A stage split into shards (benchmark.shards > 1): `shard=i` runs shard i only (an
    array task, or a local GPU worker); `merge_only` merges the finished shards (the merge task).
    """
    store = Store(store_root)
    if store.is_done(stage_hash):
        print(f"stage {stage_hash} is already done")
        return stage_hash
    stage = load_stage(store, stage_hash)
    # _execute only needs the kind of each input (they are done, so their stage.json exists)
    kinds = {d: SimpleNamespace(kind=store.stage_info(d)["kind"]) for d in stage.deps}
    graph = SimpleNamespace(stages=kinds)
    if shard is not None:
        n = stage_shards(stage)
        if not 0 <= shard < n:
            raise ValueError(f"stage {stage_hash} runs as {n} shard(s) (benchmark.shards in its run_config.yaml); "
                             f"there is no shard {shard}")
        _check_inputs_done(stage, store)
        print(f"running {stage.kind} {stage.hash} [{stage.describe()}] shard {shard + 1} of {n}", flush=True)
        run_shard(store, stage, graph, runner, shard, n)
        return shard_key(stage_hash, shard, n)
    if stage.kind in ACCELERATE_METHODS and processes > 1:
        runner = _MultiProcess(runner, ACCELERATE_METHODS[stage.kind], processes, accelerate or {})
    print(f"running {stage.kind} {stage.hash} [{stage.describe()}] rows {', '.join(stage.rows)}", flush=True)
    _execute(stage, graph, store, runner, lambda m: print(m, flush=True), merge_only=merge_only)
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
    works = stage_works(graph, store, None)
    arrays = plan_arrays([Item(w.key, w.kind, tuple(w.deps)) for w in works], lambda k: _work_done(store, k), {},
                         KINDS + (MERGE_KIND,))
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
    runs: dict[str, list[tuple[int | None, dict]]] = {}     # row -> [(seed, its cells)]
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
        runs.setdefault(plan.row.name, []).append((plan.seed, row_cells))
        if not plan.first_seed:
            extra[plan.row.name]["stages"]["seeds"][str(plan.seed)] = _stages_of(plan)
            continue
        per_frame = {det: get_key((r or {}).get("metrics", {}), PER_FRAME_KEY, None) for det, r in evals.items()}
        extra[plan.row.name] = {"stages": {**_stages_of(plan), "seeds": {}},
                                "per_frame": {k: v for k, v in per_frame.items() if v}}
        if plan.seed is None:
            del extra[plan.row.name]["stages"]["seeds"]
    for name, per_seed in runs.items():
        if len(per_seed) == 1 and per_seed[0][0] is None:
            cells[name] = per_seed[0][1]
            continue
        # several seeds: the table's number is the mean over seeds (None unless every seed has one)
        values = {c.id: [rc.get(c.id) for _, rc in per_seed] for c in spec.columns}
        cells[name] = {cid: (float(np.mean(v)) if all(x is not None for x in v) else None) for cid, v in values.items()}
        extra[name]["seeds"] = {"seeds": [sd for sd, _ in per_seed], "values": values,
                                "std": {cid: (float(np.std(v, ddof=1)) if len(v) > 1 and all(x is not None for x in v)
                                              else None) for cid, v in values.items()}}
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
            res = store.result(h) if not plan.unavailable else None
            value = get_key((res or {}).get("metrics", {}), "fid.preprocessing", None)
            if value:
                fid.add(str(value))
    return [f"FID preprocessing: {', '.join(sorted(fid))} (metrics.fid.protocol)"] if fid else []


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
    from benchmark.tables import caption_text, protocol_text, render_table, uncertainty_text
    spec = graph.table
    cells, extra, sizes = collect(graph, store)
    stats, uncertainty = cell_statistics(graph, store, extra)
    description = str(get_key(graph.render.run_cfg, "benchmark.description", graph.profile))
    protocol = protocol_text([graph.stages[p.generate].run_cfg if p.generate in graph.stages else p.cfg
                              for p in graph.rows if p.cfg])
    made_by = provenance.summarize(store.stage_info(s.hash).get("provenance")
                                   for s in graph.order() if store.is_done(s.hash))
    caption = caption_text(spec, description=description, sizes=sizes, fake=fake,
                           notes=[protocol, *protocol_notes(graph, store), uncertainty_text(spec, uncertainty),
                                  provenance.footnote(made_by)])
    unavailable = {p.row.name: p.unavailable for p in graph.rows if p.unavailable}
    outputs = render_table(spec, cells, caption=caption, out_dir=out_dir, unavailable=unavailable,
                           profile=graph.profile, fake=fake, extra=extra, provenance=made_by, stats=stats,
                           uncertainty=uncertainty)
    if figures:
        outputs.update(_figures(graph, store, out_dir, extra, note=("FAKE RUNNER: " if fake else "") + description))
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
            st = {"interval": cells[0]["interval"] if cells[0] else None, "diff": diffs[0],
                  "baseline": next((x["baseline"] for x in cells if x and x["baseline"]), None),
                  "significant": mark}
            if seeds != [None]:
                st["per_seed"] = [{"seed": sd, **(x or {})} for sd, x in zip(seeds, cells)]
            row_stats[c.id] = st
        stats[row.name] = row_stats
        for sd in seeds[:1]:
            if (row.name, sd) in bands and row.name in extra:
                extra[row.name]["per_frame_band"] = bands[(row.name, sd)]
    show = bool(get_key(graph.render.run_cfg, "benchmark.intervals", True))
    uncertainty = {"show": show, "seeds": seeds, "bootstrap": opts,
                   "baselines": [r for r in spec.compare_to if any(x.row.name == r for x in graph.rows)]}
    return stats, uncertainty


def _figures(graph: StageGraph, store: Store, out_dir: Path, extra: dict, note: str = "") -> dict[str, Path]:
    """Every figure's title ends with the profile's note (smoke: tiny random models ...)."""
    from benchmark import plots
    spec, stem = graph.table, f"table_{graph.table.name}"
    note = f"\n{note}" if note else ""
    fig_cfg = get_key(graph.render.run_cfg, "benchmark.figures", {}) or {}
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
    made = plots.plot_loss_curves(logs, out_dir / f"{stem}_loss.png", title=f"Table {spec.name}: training losses{note}")
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
    conf = float(get_key(graph.render.run_cfg, "benchmark.bootstrap.confidence", 0.95))
    band = f"; shaded: {100 * conf:g}% bootstrap interval over the test videos" if shaded else ""
    made = plots.plot_per_frame(per_frame, out_dir / f"{stem}_per_frame.png",
                                title=f"Table {spec.name}: detection metrics per frame index{band}{note}")
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
