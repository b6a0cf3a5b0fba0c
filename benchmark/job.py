"""One stage by hash in a fresh process: a SLURM task (benchmark/cluster.py) or a local shard
worker (benchmark/shards.py). The stage is saved in its folder (`prepare_stage`), loaded back
(`load_stage`, which checks that its config still hashes to its name) and run by `execute_stage`
(benchmark/local.py), exactly as the local loop runs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import yaml

from benchmark.local import check_inputs_done, execute_stage
from benchmark.shards import run_shard, shard_key, stage_shards
from benchmark.stage_runner import StageRunner
from benchmark.stages import Stage
from benchmark.stages import stage_hash as stage_hash_of
from benchmark.store import RUN_CONFIG, STAGE, Store
from data.cli import setup_logging

log = logging.getLogger(__name__)

# Stage kinds whose runner method is an accelerate training loop: with gpus_per_task > 1 in the
# cluster config, that method runs under `accelerate launch` with one process per GPU.
ACCELERATE_METHODS = {"train": "run_train", "ctrlv_bbox": "run_ctrlv_train", "ctrlv_box2video": "run_ctrlv_train"}


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
        raise ValueError(
            f"{d / STAGE}: its config does not hash to {stage_hash} (the folder was edited, or "
            f"prepared by another version); delete {d} and run again"
        )
    return Stage(
        info["kind"],
        stage_hash,
        config,
        run_cfg,
        tuple(info.get("deps") or ()),
        info.get("params") or {},
        list(info.get("rows") or []),
    )


def run_stage(
    store_root: str,
    stage_hash: str,
    runner: StageRunner,
    processes: int = 1,
    accelerate: dict | None = None,
    shard: int | None = None,
    merge_only: bool = False,
) -> str:
    """What one SLURM job runs: the stage `stage_hash` of the store, exactly as the local loop runs it.

    The job may be a requeued one (timeout, preemption): the stage resumes from what its folder holds.
    A training kind (ACCELERATE_METHODS) with `processes` > 1 runs under `accelerate launch`, one
    process per GPU. A stage split into shards (benchmark.shards > 1): `shard=i` runs shard i only (an
    array task, or a local GPU worker); `merge_only` merges the finished shards (the merge task).
    """
    setup_logging()  # a job's entry point: its progress goes to the job's log with timestamps
    store = Store(store_root)
    if store.is_done(stage_hash):
        log.info(f"stage {stage_hash} is already done")
        return stage_hash
    stage = load_stage(store, stage_hash)
    # execute_stage only needs the kind of each input (they are done, so their stage.json exists)
    kinds = {d: SimpleNamespace(kind=store.stage_info(d)["kind"]) for d in stage.deps}
    graph = SimpleNamespace(stages=kinds)
    if shard is not None:
        n = stage_shards(stage)
        if not 0 <= shard < n:
            raise ValueError(
                f"stage {stage_hash} runs as {n} shard(s) (benchmark.shards in its run_config.yaml); "
                f"there is no shard {shard}"
            )
        check_inputs_done(stage, store)
        log.info(f"running {stage.kind} {stage.hash} [{stage.describe()}] shard {shard + 1} of {n}")
        run_shard(store, stage, graph, runner, shard, n)
        return shard_key(stage_hash, shard, n)
    if stage.kind in ACCELERATE_METHODS and processes > 1:
        runner = MultiProcess(runner, ACCELERATE_METHODS[stage.kind], processes, accelerate or {})
    log.info(f"running {stage.kind} {stage.hash} [{stage.describe()}] rows {', '.join(stage.rows)}")
    execute_stage(stage, graph, store, runner, log.info, merge_only=merge_only)
    return stage_hash


class MultiProcess:
    """The stage runner with one method (a training loop on accelerate) under `accelerate launch`
    (slurm/multigpu.py); the store is touched by this (parent) process only."""

    def __init__(self, inner: StageRunner, method: str, processes: int, accelerate: dict):
        self.inner, self.method, self.processes, self.accelerate = inner, method, processes, accelerate

    def __getattr__(self, name):  # only called for what this class does not define itself
        if name.startswith("__") or name in ("inner", "method", "processes", "accelerate"):
            raise AttributeError(name)
        if name != self.method:
            return getattr(self.inner, name)
        from slurm.multigpu import main_process_port, run_in_processes

        def launched(*args):
            return run_in_processes(
                getattr(self.inner, name),
                args,
                self.processes,
                args[-1],
                port=main_process_port(self.accelerate.get("main_process_port", "auto")),
                extra_args=self.accelerate.get("extra_args") or (),
            )

        return launched
