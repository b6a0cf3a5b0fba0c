"""Executing stages on a cluster: the pending stages as SLURM job arrays (slurm/launch.py).

Each stage becomes one array task that runs `benchmark.job.run_stage` by hash (the same
`execute_stage` as the local loop); a stage split into N shards becomes N tasks plus a merge task
(kind `merge`) that waits for them. `launcher=debug` takes the same path with submitit's in-process
DebugExecutor. With `--no-wait` a render job draws the table once every job ended.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from benchmark.job import ACCELERATE_METHODS, prepare_stage, run_stage
from benchmark.render import render
from benchmark.shards import shard_key, stage_shards
from benchmark.stages import KINDS, StageGraph
from benchmark.store import Store
from data.cli import setup_logging

log = logging.getLogger(__name__)

# The SLURM task that merges the shards of a split stage (configs/slurm kinds.merge: a CPU, no GPU).
MERGE_KIND = "merge"


def launch_table(
    graph: StageGraph,
    store: Store,
    runner,
    launcher: str,
    cluster: dict | None,
    wait: bool,
    echo,
    out_dir: Path,
    fake: bool,
    figures: bool,
):
    """The pending stages as job arrays (slurm/launch.py); each job runs `run_stage` by hash."""
    from slurm.config import kind_settings, load_cluster
    from slurm.launch import Work, launch

    cluster = cluster if cluster is not None else load_cluster("default")
    root = store.root.resolve()
    if launcher == "slurm":
        from slurm.records import QueueUnavailable, slurm_available

        why = slurm_available()
        if why:
            raise QueueUnavailable(
                f"launcher=slurm: no SLURM cluster answers here ({why}); use launcher=local, or "
                f"start a test cluster with slurm/start-local-slurm.sh (docs/slurm.md)"
            )
    accel = cluster.get("accelerate") or {}

    def processes(kind: str) -> int:  # one process per GPU for the kinds that train with accelerate
        return max(1, int(kind_settings(cluster, kind).get("gpus_per_task") or 0)) if kind in ACCELERATE_METHODS else 1

    works = stage_works(graph, store, runner, processes, accel)
    render_work = Work(
        f"render-{graph.render.hash}",
        "render",
        render_job,
        (graph, str(root), str(Path(out_dir).resolve()), fake, figures),
        label=f"render table {graph.table.name}",
    )
    folder = Path(cluster.get("folder") or root / ".slurm")
    return launch(
        works,
        is_done=lambda k: work_done(store, k),
        cluster=cluster,
        executor=launcher,
        folder=folder,
        chdir=cluster.get("chdir") or os.getcwd(),
        pythonpath=Path(__file__).resolve().parents[1],
        wait=wait,
        kind_order=KINDS + (MERGE_KIND,),
        after=render_work,
        echo=echo,
        prepare=lambda k: prepare_stage(store, graph.stages[split_key(k)[0]]),
    )


def stage_works(graph: StageGraph, store: Store, runner, processes=lambda kind: 1, accel: dict | None = None):
    """The pending stages as works (one SLURM task each). A stage split into N shards becomes N works
    `<hash>:<i>/<N>` of its own kind and one work `<hash>` of kind `merge` waiting for them, so whatever
    needs the stage waits for its merge (the plan leaves out shards already recorded: `work_done`)."""
    from slurm.launch import Work

    root = str(store.root.resolve())
    works = []
    for s in graph.pending(store.is_done):
        n = stage_shards(s)
        label = f"{s.kind} {s.hash} [{s.describe()}]"
        if n == 1:
            works.append(
                Work(
                    s.hash,
                    s.kind,
                    run_stage,
                    (root, s.hash, runner, processes(s.kind), accel or {}),
                    s.deps,
                    store.dir(s.hash),
                    label=label,
                )
            )
            continue
        keys = [shard_key(s.hash, i, n) for i in range(n)]
        works += [
            Work(
                keys[i],
                s.kind,
                run_stage,
                (root, s.hash, runner, 1, None, i),
                s.deps,
                store.shard_dir(s.hash, i, n),
                label=f"{label} shard {i + 1}/{n}",
            )
            for i in range(n)
        ]
        works.append(
            Work(
                s.hash,
                MERGE_KIND,
                run_stage,
                (root, s.hash, runner, 1, None, None, True),
                tuple(keys),
                store.dir(s.hash),
                label=f"{label} merge of {n} shards",
            )
        )
    return works


def split_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """work key -> (stage hash, (shard, count) or None)."""
    if ":" not in key:
        return key, None
    h, rest = key.split(":", 1)
    i, n = rest.split("/")
    return h, (int(i), int(n))


def work_done(store: Store, key: str) -> bool:
    h, shard = split_key(key)
    return store.is_done(h) or (shard is not None and store.shard_done(h, *shard))


def render_job(graph: StageGraph, store_root: str, out_dir: str, fake: bool, figures: bool) -> dict:
    """The render job of `benchmark.run ... --no-wait`: the table from whatever finished."""
    setup_logging()  # a job's entry point: its lines go to the job's log with timestamps
    outputs = render(graph, Store(store_root), Path(out_dir), fake=fake, figures=figures)
    for k, p in outputs.items():
        log.info(f"wrote {k}: {p}")
    return {k: str(p) for k, p in outputs.items()}


def format_arrays(graph: StageGraph, store: Store) -> str:
    """The dry-run view of launcher=slurm: which stages form which array, and what each waits for
    (jobs already queued are not looked up in a dry run)."""
    from slurm.plan import Item, plan_arrays

    works = stage_works(graph, store, None)
    arrays = plan_arrays(
        [Item(w.key, w.kind, tuple(w.deps)) for w in works], lambda k: work_done(store, k), {}, KINDS + (MERGE_KIND,)
    )
    lines = [f"job arrays ({len(arrays)}), each task waiting (afterok) for exactly the stages it needs:"]
    for a in arrays:
        lines.append(f"  {a.name:<16} {len(a.keys)} task(s)")
        lines += [
            f"    [{i}] {k}" + (f" after {', '.join(a.needs[k])}" if a.needs[k] else "") for i, k in enumerate(a.keys)
        ]
    return "\n".join(lines)
