"""Executing stages here, in this process: one stage, its runner method, its commit to the store.

`execute_stage` is what the local loop (benchmark/run_table.py), a SLURM job and a local shard
worker (benchmark/job.py) all run: check the inputs, lock the stage folder, call the StageRunner
method for the stage's kind (`call_runner`), or run and merge its shards (benchmark/shards.py),
and commit the result (benchmark/store.py). `check_finished` checks finished stages against their
manifests before they are reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmark.shards import Shard, check_can_shard, merge_shards, run_shards, stage_shards
from benchmark.stage_runner import StageRunner
from benchmark.stages import Stage, StageGraph
from benchmark.store import DAMAGED, STALE, Store, atomic_write_json
from data.atomic import DiskFull, disk_full

log = logging.getLogger(__name__)


def execute_stage(
    stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, echo, *, merge_only: bool = False
) -> None:
    """Run a stage and commit it. A stage split into shards (benchmark.shards > 1, benchmark/shards.py)
    runs its unfinished shards (here, or one worker per GPU), then merges them; `merge_only` (the
    SLURM merge task, whose shards ran as array tasks) refuses to run a missing shard itself."""
    check_inputs_done(stage, store)
    n = stage_shards(stage)
    if n > 1:
        check_can_shard(runner, stage, n)
    with store.lock(stage.hash, echo):
        if store.is_done(stage.hash):  # another process ran it while this one waited
            echo(f"stage {stage.kind} {stage.hash} was done by another process")
            return
        _execute_locked(stage, graph, store, runner, echo, n, merge_only)


def check_finished(graph: StageGraph, store: Store, echo=None) -> list[str]:
    """Check each finished stage of the graph before it is reused, in dependency order:
    - against its manifest (benchmark/manifest.py): names and sizes (one stat per file), and the
      content hash of every file touched since it was last found intact (its size, mtime, ctime or
      inode changed): a same-size change to weights is caught without rehashing untouched
      checkpoints on every rerun; `benchmark.status --verify` hashes every file in full;
    - against its inputs: a stage made from an input stage that is set aside now, is not finished
      (so it runs again), or was recomputed since (its manifest digest differs from the one recorded at commit), is stale.
    A damaged or stale stage is moved to `<store>/.damaged/` (stale: `.stale/`) and so recomputed,
    and so is everything downstream of it; the message names the damaged files or the input. A stage
    finished before manifests existed is trusted, with a warning: recomputing every old stage (days of
    training on the paper profile) for a check that was never possible would cost more than it saves.
    Returns the hashes set aside."""
    echo = echo or log.warning
    aside: list[str] = []
    for s in graph.order():
        if not store.is_done(s.hash):
            continue
        why = _not_reusable(s, graph, store, aside, echo)
        if why is None:
            continue
        with store.lock(s.hash, echo):
            why = _not_reusable(s, graph, store, aside) if store.is_done(s.hash) else None  # another run may have acted
            if why is None:
                continue
            damaged = why.startswith("is damaged")
            moved = store.set_aside(s.hash, into=DAMAGED if damaged else STALE)
        echo(
            f"stage {s.kind} {s.hash} (rows: {', '.join(s.rows)}) {why}. "
            f"Its folder was moved to {moved} and the stage is recomputed"
        )
        aside.append(s.hash)
    return aside


def _not_reusable(s: Stage, graph: StageGraph, store: Store, aside: list[str], echo=None) -> str | None:
    """Why a finished stage cannot be reused (None: it can)."""
    damage = store.verify(s.hash, reuse=True)
    if damage is None and echo is not None:
        echo(
            f"warning: stage {s.kind} {s.hash} finished before stages had manifests: its files cannot be "
            f"checked and are trusted (delete {store.dir(s.hash)} to recompute it)"
        )
    if damage:
        shown = "; ".join(damage[:5]) + (f"; ... {len(damage) - 5} more" if len(damage) > 5 else "")
        return f"is damaged since it finished: {shown}"
    # an input set aside now, or not finished (deleted, or resumed without its DONE) is made again
    redone = [d for d in s.deps if d in aside or not store.is_done(d)] or store.made_from_other_inputs(s.hash)
    if redone:
        names = ", ".join(f"{graph.stages[d].kind if d in graph.stages else 'stage'} {d}" for d in redone)
        return f"was made from input stage(s) {names}, which are recomputed or changed since: it is stale"
    return None


def check_inputs_done(stage: Stage, store: Store) -> None:
    for d in stage.deps:
        if not store.is_done(d):
            raise RuntimeError(f"stage {stage.kind} {stage.hash} depends on {d}, which is not done")


def _execute_locked(
    stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, echo, n: int, merge_only: bool
) -> None:
    out = store.begin(stage)
    try:
        if n == 1:
            res = call_runner(stage, graph, store, runner, out)
        else:
            todo = [i for i in range(n) if not store.shard_done(stage.hash, i, n)]
            if todo and merge_only:
                raise RuntimeError(
                    f"stage {stage.kind} {stage.hash}: shard(s) {todo} of {n} have no record "
                    f"({store.dir(stage.hash) / 'shards'}); their array tasks did not finish"
                )
            if todo:
                run_shards(stage, graph, store, runner, todo, n, echo)
            res = merge_shards(
                stage, graph, store, runner, out, [store.shard_result(stage.hash, i, n) for i in range(n)]
            )
        store.commit(stage, res)  # inside: a full disk or an output that does not pass fails it too
    except BaseException as e:
        full = isinstance(e, Exception) and disk_full(e, out)
        error = (
            DiskFull(
                f"stage {stage.kind} {stage.hash}: no space left on device writing under {out} (errno 28; "
                f"{type(e).__name__}: {str(e)[:200]}); free space and rerun: the stage resumes"
            )
            if full
            else e
        )
        store.fail(stage.hash, error)  # benchmark.status shows it as failed, with this summary
        what = "was interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        echo(
            f"stage {stage.kind} {stage.hash} {what} (rows: {', '.join(stage.rows)}); its folder {out} is kept "
            f"and the next run retries it"
        )
        if full:
            raise error from e
        raise


def call_runner(
    stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, out: Path, shard: Shard | None = None
):
    """The runner's method for the stage's kind; with `shard`, only that shard's part (its record)."""
    cfg = stage.run_cfg
    kw = {} if shard is None else {"shard": shard}
    if stage.kind == "testset":
        return runner.run_testset(stage, cfg, out)
    if stage.kind == "train":
        init_from = store.dir(stage.deps[0]) if stage.deps else None
        return runner.run_train(stage, cfg, init_from, out)
    if stage.kind in ("ctrlv_bbox", "ctrlv_box2video"):
        backbone = store.dir(stage.deps[0]) if stage.deps else None  # Box2Video: the backbone's last epoch
        return runner.run_ctrlv_train(stage, cfg, backbone, out)
    if stage.kind == "generate" and stage.params.get("ctrlv"):
        cv = stage.params["ctrlv"]
        return runner.run_generate_ctrlv(
            stage,
            cfg,
            store.dir(cv["bbox"]),
            store.dir(cv["box2video"]),
            out,
            test_clips=store.dir(dep_of(stage, graph, "testset")),
            **kw,
        )
    if stage.kind == "generate":
        ckpt = stage.params.get("checkpoint")
        return runner.run_generate(
            stage,
            cfg,
            store.dir(ckpt) if ckpt else None,
            out,
            test_clips=store.dir(dep_of(stage, graph, "testset")),
            **kw,
        )
    if stage.kind == "evaluate":
        videos_dir, real_dir = evaluate_inputs(stage, graph, store)
        metrics = runner.run_evaluate(stage, cfg, videos_dir, out, real_dir=real_dir, **kw)
        if shard is not None:
            return metrics  # the shard's record, not metrics yet
        return evaluate_result(metrics, out)
    raise ValueError(f"unknown stage kind {stage.kind!r}")


def evaluate_inputs(stage: Stage, graph: StageGraph, store: Store) -> tuple[Path, Path]:
    gen = store.result(dep_of(stage, graph, "generate"))
    real = store.result(dep_of(stage, graph, "testset"))
    return Path(gen["frames"]), Path(real["frames"])


def evaluate_result(metrics, out: Path) -> dict:
    if not isinstance(metrics, dict):
        raise TypeError(f"run_evaluate returned {type(metrics).__name__}, expected the metrics dict")
    atomic_write_json(out / "metrics.json", metrics)
    return {"metrics": metrics, "metrics_file": out / "metrics.json"}


def dep_of(stage: Stage, graph: StageGraph, kind: str) -> str:
    for d in stage.deps:
        if graph.stages[d].kind == kind:
            return d
    raise KeyError(f"stage {stage.kind} {stage.hash} has no {kind} dependency")
