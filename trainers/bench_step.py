"""Time the diffusion-only step and the LSA step on the same model, size and frames.

    python -m trainers.bench_step [--steps 5] [--out results/perf/bench_step.json] [key=value ...]

Examples: the tiny CPU model (default: model=tiny, 8 x 64 x 96), or paper scale on a GPU:
    python -m trainers.bench_step model=full-random data.height=320 data.width=512 data.clip_len=25 \
        train.mixed_precision=bf16 train.grad_checkpointing=true loss.decode_checkpoint=true

Reports the median step time (forward + backward + optimizer step) of each, their ratio, and peak
memory: CUDA max allocated on a GPU, peak RSS of the process on the CPU (reset between the two).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from trainers.config import load_config


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(trainer, batch, steps: int, warmup: int = 1) -> tuple[list[float], int]:
    from trainers.loop import step_generator
    acc, device = trainer.acc, trainer.acc.device
    times = []
    _reset_peak(device)
    for k in range(warmup + steps):
        g = step_generator(0, k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = trainer.compute_loss(batch, g)
        acc.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return times, _peak_bytes(device)


def bench(overrides: list[str], steps: int = 5) -> dict:
    from trainers.loop import Trainer
    cfg = load_config(["model=tiny", "schedule=joint", "train.out_dir=runs/bench_step", *overrides])
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    result = {}
    for name, feat_from in (("diffusion", None), ("lsa", 1)):
        cfg.schedule.feat_from_epoch = feat_from
        times, peak = time_steps(trainer, batch, steps)
        result[name] = dict(median_s=statistics.median(times), times_s=times, peak_mem_gib=peak / 2 ** 30)
    device = trainer.acc.device
    frames = batch["frames"]
    result["lsa_over_diffusion"] = result["lsa"]["median_s"] / result["diffusion"]["median_s"]
    result["setting"] = dict(
        model=cfg.model.name, frames=list(frames.shape[1:]), batch=frames.shape[0], adapter=cfg.adapter.name,
        mixed_precision=cfg.train.mixed_precision, grad_checkpointing=cfg.train.grad_checkpointing,
        decode_chunk=cfg.loss.decode_chunk, decode_checkpoint=cfg.loss.decode_checkpoint,
        decode_frames=cfg.loss.decode_frames, steps=steps, overrides=overrides)
    result["device"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}")
    result["memory_kind"] = "CUDA max allocated" if device.type == "cuda" else "process peak RSS"
    import diffusers
    result["versions"] = dict(torch=torch.__version__, diffusers=diffusers.__version__)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args, overrides = ap.parse_known_args(argv)
    r = bench(overrides, args.steps)
    d, l = r["diffusion"], r["lsa"]
    print(f"device: {r['device']}  setting: {r['setting']}")
    print(f"diffusion step: {d['median_s'] * 1e3:.1f} ms median, peak {d['peak_mem_gib']:.2f} GiB ({r['memory_kind']})")
    print(f"LSA step:       {l['median_s'] * 1e3:.1f} ms median, peak {l['peak_mem_gib']:.2f} GiB")
    print(f"LSA / diffusion: {r['lsa_over_diffusion']:.2f}x")
    if args.out:
        from data.atomic import atomic_write_json
        out = atomic_write_json(args.out, r)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
