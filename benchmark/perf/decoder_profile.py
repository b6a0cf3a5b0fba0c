"""Where the temporal decoder's backward pass spends its time: a torch.profiler table of its operators.

The LSA step's added cost is mostly the decoder run with gradients over every frame. This profiles
that part alone, in the trainer's own setting (chunking, checkpointing, attention, channels-last,
compilation): the latents of the batch go through `decode_with_grad` and a scalar of the frames
is backpropagated to them. One untimed pass first (compilation, cuDNN choices), then one timed
pass without the profiler (forward and backward seconds) and one under it (the table, the
backward only: with chunk checkpointing it holds the forward's recomputation too).
"""

from __future__ import annotations

import time

import torch

TOP = 15  # operators kept in the table


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_decoder_backward(trainer, batch, top: int = TOP) -> dict:
    from trainers.decoder_speed import chunk_checkpoint, decode_with_grad
    from trainers.objective import select_frames

    cfg, vae, device = trainer.cfg, trainer.parts.vae, trainer.acc.device
    frames = batch["frames"].to(device)
    B, T = frames.shape[:2]
    idx = select_frames(T, cfg.loss.decode_frames)
    with torch.no_grad():
        lat = vae.encode(frames[:, idx].flatten(0, 1).to(trainer.weight_dtype)).latent_dist.mean
    z = (lat.float() * trainer.parts.latent_scale).view(B, len(idx), *lat.shape[1:])

    def forward():
        zz = z.clone().requires_grad_(True)
        with trainer.acc.autocast():
            x = decode_with_grad(
                vae,
                zz,
                trainer.parts.latent_scale,
                int(cfg.loss.decode_chunk),
                chunk_checkpoint(cfg.loss),
                bool(cfg.loss.decode_channels_last),
            )
        return x.float().square().mean()

    forward().backward()  # warm-up (compilation)
    _sync(device)
    t0 = time.perf_counter()
    loss = forward()
    _sync(device)
    t1 = time.perf_counter()
    loss.backward()
    _sync(device)
    t2 = time.perf_counter()

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    loss = forward()
    _sync(device)
    with profile(activities=activities) as prof:
        loss.backward()
        _sync(device)
    return dict(frames=len(idx), forward_s=t1 - t0, backward_s=t2 - t1, **op_table(prof, device, top))


def op_table(prof, device, top: int = TOP) -> dict:
    """The operators of a profile by self time on the device (CUDA kernels' time; on the CPU its own)."""
    on_gpu = device.type == "cuda"

    def self_time(e):  # microseconds
        if on_gpu:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        return e.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_time(e) > 0]
    total = sum(self_time(e) for e in events)
    events.sort(key=self_time, reverse=True)
    rows = [
        dict(op=e.key, self_ms=self_time(e) / 1e3, share=self_time(e) / total if total else 0.0, calls=e.count)
        for e in events[:top]
    ]
    return dict(time_kind="self CUDA time" if on_gpu else "self CPU time", total_ms=total / 1e3, ops=rows)


def markdown_table(p: dict) -> list[str]:
    lines = [
        f"{p['frames']} frames: forward {p['forward_s']:.3f} s, backward {p['backward_s']:.3f} s "
        f"(timed without the profiler); {p['time_kind']} of the backward under the profiler: "
        f"{p['total_ms']:.1f} ms",
        "",
        f"| operator | {p['time_kind']} (ms) | share | calls |",
        "|---|--:|--:|--:|",
    ]
    for r in p["ops"]:
        lines.append(f"| `{r['op'][:70]}` | {r['self_ms']:.2f} | {r['share']:.1%} | {r['calls']} |")
    return lines
