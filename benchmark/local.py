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
from benchmark.store import Store, atomic_write_json

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
    """Check each finished stage of the graph against its manifest before it is reused: names and
    sizes (one stat per file, so every rerun of a paper table stays fast; truncated, deleted, added
    and replaced-by-another-size files are what goes wrong in practice); `benchmark.status --verify`
    also compares the content hashes (benchmark/manifest.py). A damaged one (a file missing, added or changed) is moved to
    `<store>/.damaged/` and so recomputed; the message names the damaged files. A stage finished
    before manifests existed is trusted, with a warning: recomputing every old stage (days of
    training on the paper profile) for a check that was never possible would cost more than it saves.
    Returns the hashes set aside."""
    echo = echo or log.warning
    damaged_hashes = []
    for s in graph.order():
        if not store.is_done(s.hash):
            continue
        damage = store.verify(s.hash, hashes=False)
        if damage is None:
            echo(
                f"warning: stage {s.kind} {s.hash} finished before stages had manifests: its files cannot be "
                f"checked and are trusted (delete {store.dir(s.hash)} to recompute it)"
            )
            continue
        if not damage:
            continue
        with store.lock(s.hash, echo):
            damage = store.verify(s.hash, hashes=False) if store.is_done(s.hash) else []  # another run may have acted
            if not damage:
                continue
            moved = store.set_aside(s.hash)
        shown = "; ".join(damage[:5]) + (f"; ... {len(damage) - 5} more" if len(damage) > 5 else "")
        echo(
            f"stage {s.kind} {s.hash} (rows: {', '.join(s.rows)}) is damaged since it finished: {shown}. "
            f"Its folder was moved to {moved} and the stage is recomputed"
        )
        damaged_hashes.append(s.hash)
    return damaged_hashes


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
    except BaseException as e:
        try:
            store.fail(stage.hash, e)  # benchmark.status shows it as failed, with this summary
        except OSError:  # (a full disk must not hide the stage's own error)
            pass
        what = "was interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        echo(
            f"stage {stage.kind} {stage.hash} {what} (rows: {', '.join(stage.rows)}); its folder {out} is kept "
            f"and the next run retries it"
        )
        raise
    store.commit(stage, res)


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
