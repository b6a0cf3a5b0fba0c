"""The cost of a table, up front: what `--dry-run` prints under the stage graph (benchmark/run_table.py).

Per stage: estimated GPU-hours, checkpoints (size, how many written, how many kept) and a warning
where the estimate exceeds the stage kind's SLURM time limit (configs/slurm/<cluster>.yaml); per
table: the GPU-hours of the pending stages and of all of them, the checkpoint disk and the frame
cache. Only a profile with a `benchmark.cost` node (profile=paper) gets a plan: the step times
are measured on a real GPU at the paper's frame size, meaningless for tiny CPU models.

The figures (all estimates, never measurements of this run):
  train            clips per epoch (`benchmark.cost.train_windows[<dataset>]`) x the measured step
                   time of the epoch's objective and adapter (results/perf/<card>.json, `steps`:
                   "unet (compiled)" when train.compile is set, else "unet"; "lora"), measured at
                   batch 1: the time per clip is what is scaled
  ctrlv_bbox       train.epochs x clips x the U-Net's diffusion step
  ctrlv_box2video  the same x `benchmark.cost.ctrlv_step_factor` (its ControlNet; not measured)
  generate         `generation.hours_per_200_videos` x videos / 200 x Euler steps / the measured
                   steps (Ctrl-V: its BBox generator's steps plus Box2Video's)
  evaluate         `evaluation.hours_per_200_videos` (FVD, FID and both detectors) x videos / 200
  checkpoint       U-Net parameters x (4 bytes of fp32 weights + 8 of AdamW moments + 4 with EMA);
                   one per train.checkpoint_every optimizer steps and one at the epoch end,
                   train.keep_checkpoints kept
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmark.stages import StageGraph, select

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
TRAIN_KINDS = ("train", "ctrlv_bbox", "ctrlv_box2video")


def load_perf(path: str | Path) -> dict:
    p = Path(path)
    p = p if p.is_absolute() or p.exists() else ROOT / p
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"benchmark.cost.perf={path}: measured times not readable ({e})") from e


def step_seconds(perf: dict, adapter: str | None, compiled: bool, objective: str) -> float:
    steps = perf.get("steps") or {}
    name = "lora" if adapter == "lora" else ("unet (compiled)" if compiled and "unet (compiled)" in steps else "unet")
    return float(steps[name][objective]["median_s"])


class Estimate:
    def __init__(self, stage, hours: float, note: str = "", ckpt_gib: float = 0.0, written: int = 0, kept: int = 0):
        self.stage, self.hours, self.note = stage, hours, note
        self.ckpt_gib, self.written, self.kept = ckpt_gib, written, kept


def estimate(stage, cost: dict, perf: dict) -> Estimate:
    cfg = stage.run_cfg
    kind = stage.kind
    if kind == "testset":
        return Estimate(stage, 0.0, "CPU only")
    if kind in TRAIN_KINDS:
        ds = str(select(cfg, "data.name", "?"))
        windows = (cost.get("train_windows") or {}).get(ds)
        if windows is None:
            return Estimate(stage, math.nan, f"no benchmark.cost.train_windows.{ds}")
        adapter = select(cfg, "adapter.name", None) if kind == "train" else "unet"
        compiled = bool(select(cfg, "train.compile", None))
        if kind == "train":
            epochs, objective = 1, stage.params.get("objective", "diffusion")
            adapter = stage.params.get("adapter") or adapter
        else:
            epochs, objective = int(select(cfg, "train.epochs", 1)), "diffusion"
        secs = step_seconds(perf, adapter, compiled, objective)
        if kind == "ctrlv_box2video":
            secs *= float(cost.get("ctrlv_step_factor", 1.0))
        clips = int(windows) * epochs
        accum = int(select(cfg, "train.grad_accum", 1) or 1) * int(select(cfg, "train.batch_size", 1) or 1)
        opt_steps = math.ceil(clips / accum)
        every = int(select(cfg, "train.checkpoint_every", 0) or 0)
        written = (opt_steps // every if every else 0) + epochs
        kept = int(select(cfg, "train.keep_checkpoints", 0) or 0) or written
        params = float(cost.get("unet_params", 0))
        per_param = 12 + (4 if select(cfg, "train.ema.enabled", False) else 0)
        ckpt = params * (per_param if adapter != "lora" else 4) / GIB
        note = f"{clips} clips x {secs:.3f} s ({objective}, {adapter}{', compiled' if compiled else ''})"
        return Estimate(stage, clips * secs / 3600, note, ckpt, written, min(kept, written))
    n = int(select(cfg, "benchmark.num_test_clips", 0) or 0)
    if kind == "generate":
        gen = perf.get("generation") or {}
        measured = int(gen.get("num_inference_steps") or 50)
        if stage.params.get("ctrlv"):
            steps = int(select(cfg, "ctrlv.inference.bbox.num_inference_steps", measured) or measured)
            steps += int(select(cfg, "ctrlv.inference.box2video.num_inference_steps", measured) or measured)
        else:
            steps = int(select(cfg, "benchmark.generate.num_inference_steps", measured) or measured)
        hours = float(gen.get("hours_per_200_videos", math.nan)) * n / 200 * steps / measured
        return Estimate(stage, hours, f"{n} videos x {steps} steps")
    if kind == "evaluate":
        hours = float((perf.get("evaluation") or {}).get("hours_per_200_videos", math.nan)) * n / 200
        return Estimate(stage, hours, f"{n} videos")
    return Estimate(stage, 0.0)


def _hours(h: float) -> str:
    return "?" if math.isnan(h) else f"{h:.1f}"


def cost_lines(graph: StageGraph, is_done, cluster: dict | None = None) -> list[str]:
    """The cost plan under the dry-run graph; [] for a profile without `benchmark.cost`."""
    cost = select(graph.rows[0].cfg or {}, "benchmark.cost", None) if graph.rows else None
    if not cost:
        return []
    if cluster is None:
        from slurm.config import load_cluster

        cluster = load_cluster("default")
    from slurm.config import kind_settings

    perf_path = cost.get("perf", "results/perf/nvidia-h200.json")
    perf = load_perf(perf_path)
    ests = [estimate(s, cost, perf) for s in graph.order()]
    lines = [
        f"Cost of table {graph.table.name} (estimates: step, generation and evaluation times measured on "
        f"{perf.get('device', '?')} in {perf_path}; clips per epoch from benchmark.cost.train_windows; docs/benchmark.md)",
        f"  {'status':<8} {'kind':<15} {'hash':<12}  {'GPU-h':>6}  {'checkpoints':<27} how",
    ]
    warnings = []
    requeues = int(cluster.get("max_num_timeout", 0) or 0)
    for e in ests:
        s = e.stage
        status = "cached" if is_done(s.hash) else "pending"
        ck = f"{e.ckpt_gib:.1f} GiB x {e.written} (keep {e.kept})" if e.written else "-"
        lines.append(f"  {status:<8} {s.kind:<15} {s.hash:<12}  {_hours(e.hours):>6}  {ck:<27} {e.note}")
        ks = kind_settings(cluster, s.kind)
        limit_h = float(ks.get("time_min", 0)) / 60
        gpus = max(1, int(ks.get("gpus_per_task") or 0))
        wall = e.hours / gpus
        if status == "pending" and limit_h and not math.isnan(wall) and wall > limit_h:
            fits = wall <= limit_h * (1 + requeues)
            warnings.append(
                f"warning: {s.kind} {s.hash} ({', '.join(s.rows)}): about {wall:.1f} h on {gpus} GPU(s) > the "
                f"SLURM time limit {limit_h:.0f} h (slurm.kinds.{s.kind}.time_min={ks.get('time_min')}); "
                + (
                    f"it finishes only through requeues from its checkpoints (max_num_timeout={requeues})"
                    if fits
                    else f"it cannot finish within {1 + requeues} x {limit_h:.0f} h: raise time_min or max_num_timeout"
                )
            )
    pending = [e for e in ests if not is_done(e.stage.hash)]
    total = sum(e.hours for e in ests if not math.isnan(e.hours))
    todo = sum(e.hours for e in pending if not math.isnan(e.hours))
    ckpt = max((e.ckpt_gib * (e.kept + 1) for e in ests if e.written), default=0.0)
    cache = cost.get("frame_cache_gb") or {}
    datasets = sorted({str(select(p.cfg or {}, "data.name", "?")) for p in graph.rows})
    caches = ", ".join(f"{d} ~{cache[d]} GB" for d in datasets if d in cache)
    lines.append(
        f"  table {graph.table.name}: {todo:.1f} GPU-h pending, {total:.1f} GPU-h in all; a train stage holds up to "
        f"{ckpt:.0f} GiB of checkpoints while it runs; frame cache (data.cache.dir): {caches or '-'}"
    )
    for kind in sorted({e.stage.kind for e in pending}):
        ks = kind_settings(cluster, kind)
        if int(ks.get("gpus_per_task") or 0) and ks.get("gpu_mem_gb") and not ks.get("gpu_constraint"):
            warnings.append(
                f"warning: {kind} needs a GPU with >= {ks['gpu_mem_gb']} GB, but slurm.kinds.{kind}.gpu_constraint "
                f"is not set: on a cluster with smaller cards it may land on one and fail (docs/slurm.md)"
            )
    return lines + warnings
