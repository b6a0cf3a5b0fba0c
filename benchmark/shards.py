"""Splitting a generate or evaluate stage into N shards of test clips that run in parallel.

`benchmark.shards: N` (default 1; not hashed: where and how a stage runs never changes what it
computes) splits every generate and evaluate stage of a run into N shards. Shard i of N takes a
contiguous block of the sorted clip names (`shard_names`) and writes its part into the stage folder:

  generate  frames/<clip>/ of its clips, each with the seed of its index in the FULL list (seed + k),
            so the frames are bit-identical to an unsharded run;
  evaluate  the per-video I3D / Inception features and detections of its clips (metrics.evaluate.
            extract_features), in blocks aligned to metrics.fvd.batch_size so I3D sees the very
            batches of an unsharded run;

and then its record `runs/<hash>/shards/<i>-of-<N>/result.json` (last, atomically: the shard is
done exactly when it exists). A merge step (the runner's merge_generate / merge_evaluate) turns the
N records into the stage's result, exactly as the unsharded stage computes it; only then are the
stage's result.json and DONE written. A shard killed midway reruns alone (generation keeps the clips
it finished); finished shards are never rerun.

Where shards run: launcher=local with two or more CUDA GPUs runs one worker process per GPU
(`python -m benchmark.shards <payload>`, pinned with CUDA_VISIBLE_DEVICES); with one GPU or none they
run one after the other in this process. launcher=slurm submits each shard as an array task and the
merge as a task of kind `merge` that waits (afterok) for them (slurm/launch.py, docs/slurm.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from data.atomic import atomic_write_bytes
from data.cli import command

if TYPE_CHECKING:
    from benchmark.stage_runner import StageRunner
    from benchmark.stages import Stage, StageGraph
    from benchmark.store import Store

SHARDED_KINDS = ("generate", "evaluate")
KEY = "benchmark.shards"
SHARDS_DIR = "shards"
PAYLOAD = "call.pkl"
LOG = "worker.log"


class Shard(NamedTuple):
    """What a runner method gets as `shard=`: shard `index` of `count`, and its own folder (inside the
    stage folder) for files only this shard writes."""

    index: int
    count: int
    folder: Path


def shard_count(cfg: dict) -> int:
    """`benchmark.shards` of a resolved config (absent: 1), checked."""
    from benchmark.config import ConfigError

    value = (cfg.get("benchmark") or {}).get("shards", 1) if isinstance(cfg, dict) else 1
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{KEY}={value!r}: expected a whole number >= 1 (how many parallel shards of test "
            f"clips each generate / evaluate stage is split into; 1 = not split)"
        )
    return value


def stage_shards(stage) -> int:
    """How many shards this stage runs as (1 for the kinds that are never split)."""
    return shard_count(stage.run_cfg) if stage.kind in SHARDED_KINDS else 1


def shard_bounds(total: int, index: int, count: int, align: int = 1) -> tuple[int, int]:
    """[start, stop) of shard `index` of `count` over `total` items: contiguous blocks whose starts
    are multiples of `align` (as even as that allows; a shard may be empty when count is large)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    align = max(1, int(align))
    units = -(-total // align)  # blocks of `align` items, the last one partial
    lo, hi = index * units // count, (index + 1) * units // count
    return min(total, lo * align), min(total, hi * align)


def shard_names(names: Sequence[str], index: int, count: int, align: int = 1) -> tuple[list[str], int]:
    """(the names of shard `index` of `count`, the index of its first name in `names`)."""
    start, stop = shard_bounds(len(names), index, count, align)
    return list(names[start:stop]), start


# ------------------------------------------------------------------------------------ local workers
def shard_key(stage_hash: str, index: int, count: int) -> str:
    """The key of shard `index` of `count` of a stage: a SLURM work's key and what run_stage returns."""
    return f"{stage_hash}:{index}/{count}"


def local_devices() -> list[str] | None:
    """The GPUs shard workers are pinned to (one process per GPU), or None when there are fewer than
    two: then the shards run one after the other in this process."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else []
    return (ids or [str(i) for i in range(torch.cuda.device_count())])[: torch.cuda.device_count()]


def run_workers(
    calls: Sequence[tuple[str, Callable, tuple, Path]],
    devices: Sequence[str | None],
    echo: Callable[[str], None] = print,
) -> None:
    """Run each (label, fn, args, folder) as `fn(*args)` in its own process, at most len(devices) at
    once, each pinned to a free device (CUDA_VISIBLE_DEVICES; None = not pinned). Every call runs to
    its end even when another fails; then failures raise, naming each worker's log
    (<folder>/worker.log)."""
    import cloudpickle

    root = Path(__file__).resolve().parents[1]
    queue, running, failed = list(calls), {}, []
    free = list(devices)
    try:
        while queue or running:
            while queue and free:
                label, fn, args, folder = queue.pop(0)
                device = free.pop(0)
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(folder / PAYLOAD, cloudpickle.dumps((fn, tuple(args))))
                env = dict(
                    os.environ,
                    PYTHONPATH=os.pathsep.join([str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                )
                if device is not None:
                    env["CUDA_VISIBLE_DEVICES"] = str(device)
                with open(folder / LOG, "w") as log:  # the child keeps its own handle
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "benchmark.shards", str(folder / PAYLOAD)],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=os.getcwd(),
                    )
                echo(f"{label}: worker pid {proc.pid}" + (f" on GPU {device}" if device is not None else ""))
                running[proc] = (label, device, folder)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                label, device, folder = running.pop(proc)
                free.append(device)
                if proc.returncode != 0:
                    failed.append((label, proc.returncode, folder / LOG))
                    echo(f"{label}: worker exited with code {proc.returncode}; log {folder / LOG}")
    except BaseException:
        for proc in running:  # interrupted: stop only the workers this call started
            proc.terminate()
        for proc in running:
            proc.wait()
        raise
    if failed:
        lines = []
        from slurm.records import tail

        for label, rc, log in failed:
            lines.append(
                f"{label}: exit code {rc}, log {log}" + "".join(f"\n    {t}" for t in tail(log, 3).splitlines())
            )
        raise RuntimeError(
            f"{len(failed)} shard worker(s) failed; the others' work is kept and the next run "
            f"redoes only these:\n  " + "\n  ".join(lines)
        )


# ------------------------------------------------------------------------------------ running shards
def check_can_shard(runner, stage: Stage, n: int) -> None:
    from benchmark.config import ConfigError

    method = f"merge_{stage.kind}"
    if not callable(getattr(runner, method, None)):
        raise ConfigError(
            f"benchmark.shards={n}: the stage runner {type(runner).__name__} cannot split {stage.kind} "
            f"stages (it has no {method} method); set benchmark.shards=1"
        )


def run_shard(store: Store, stage: Stage, graph, runner: StageRunner, index: int, count: int) -> dict:
    """Shard `index` of `count` of the stage: its part of the work, then its record (skipped when
    the record exists). Touches nothing but its clips' outputs and its own shard folder, so shards
    may run at the same time."""
    from benchmark.local import call_runner

    if store.shard_done(stage.hash, index, count):
        return store.shard_result(stage.hash, index, count)
    folder = store.shard_dir(stage.hash, index, count)
    folder.mkdir(parents=True, exist_ok=True)
    res = call_runner(stage, graph, store, runner, store.dir(stage.hash), Shard(index, count, folder))
    store.commit_shard(stage.hash, index, count, res)
    return res


def run_shards(
    stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, todo: list[int], n: int, echo
) -> None:
    """The unfinished shards: one worker process per GPU when there are several, else here in turn."""
    from benchmark.job import prepare_stage, run_stage

    devices = local_devices()
    if devices is None:
        for i in todo:
            echo(f"{stage.kind} {stage.hash}: shard {i + 1} of {n}")
            run_shard(store, stage, graph, runner, i, n)
        return
    prepare_stage(store, stage)  # what a worker loads the stage from (run_stage by hash)
    root = str(store.root.resolve())
    run_workers(
        [
            (
                f"{stage.kind} {stage.hash} shard {i + 1}/{n}",
                run_stage,
                (root, stage.hash, runner, 1, None, i),
                store.shard_dir(stage.hash, i, n),
            )
            for i in todo
        ],
        devices,
        echo,
    )


def merge_shards(
    stage: Stage, graph: StageGraph, store: Store, runner: StageRunner, out: Path, parts: list[dict]
) -> dict:
    """The stage's result from its shards' records (the runner's merge_<kind>), as the unsharded
    stage returns it."""
    from benchmark.local import dep_of, evaluate_inputs, evaluate_result

    cfg = stage.run_cfg
    if stage.kind == "generate":
        return runner.merge_generate(stage, cfg, out, parts, test_clips=store.dir(dep_of(stage, graph, "testset")))
    videos_dir, real_dir = evaluate_inputs(stage, graph, store)
    return evaluate_result(runner.merge_evaluate(stage, cfg, out, parts, videos_dir=videos_dir, real_dir=real_dir), out)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmark.shards <payload>`: one local shard worker (the pickled call of run_workers)."""
    import cloudpickle

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print(
            "usage: python -m benchmark.shards <payload.pkl> (started by benchmark.shards.run_workers)", file=sys.stderr
        )
        return 2
    from data.cli import setup_logging

    setup_logging()  # a worker process: its progress logged like the command's
    with open(argv[0], "rb") as f:
        fn, args = cloudpickle.load(f)
    fn(*args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
