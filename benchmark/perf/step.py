"""Time the diffusion-only step and the LSA step on the same model, size and frames.

    python -m benchmark.perf.step [--steps 5] [--out results/perf/bench_step.json] [key=value ...]

Examples: the tiny CPU model (default: model=tiny, 8 x 64 x 96), or paper scale on a GPU:
    python -m benchmark.perf.step model=full-random data.height=320 data.width=512 data.clip_len=25 \
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

from data.cli import command
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


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU with its threads (`device` None: the GPU when there is one)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def memory_kind(device: torch.device) -> str:
    return "CUDA max allocated" if device.type == "cuda" else "process peak RSS"


def versions() -> dict:
    import diffusers
    import transformers

    v = dict(torch=torch.__version__, diffusers=diffusers.__version__, transformers=transformers.__version__)
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def _peak_reserved_bytes(device) -> int | None:
    """What the CUDA caching allocator held at most (allocated + fragmentation): what must fit on the card."""
    return int(torch.cuda.max_memory_reserved()) if device.type == "cuda" else None


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
        trainer.objective.step_extra(acc, trainer.optimizer)  # the REPA / TRD projector, as the loop does
        trainer.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return times, _peak_bytes(device)


def _measure(trainer, batch, steps: int, warmup: int = 1) -> dict:
    times, peak = time_steps(trainer, batch, steps, warmup)
    reserved = _peak_reserved_bytes(trainer.acc.device)
    return dict(
        median_s=statistics.median(times),
        times_s=times,
        peak_mem_gib=peak / 2**30,
        peak_reserved_gib=reserved / 2**30 if reserved is not None else None,
    )


SWITCHES = (
    "loss.decode_checkpoint",
    "loss.decode_chunk",
    "train.grad_checkpointing",
    "loss.dino_attention",
    "loss.real_feature_cache",
    "train.cudnn_benchmark",
    "loss.decode_channels_last",
    "loss.decode_checkpoint_level",
    "loss.decode_attention",
    "train.sdpa_backend",
    "train.optimizer",
    "loss.decode_frames",
    "loss.dino_size",
    "train.compile",
    "train.adam_fused",
)
# what the sweep can flip (`sweep_only` picks some: a switch name, or name=value for one of its rows)
APPROXIMATIONS = (
    "loss.decode_frames",
    "loss.dino_size",
)  # rows that change the loss: gradient compared to the baseline


def bench(
    overrides: list[str],
    steps: int = 5,
    sweep: bool = False,
    sweep_steps: int = 3,
    sweep_only: list[str] | None = None,
    profile_decoder: bool = False,
    warmup: int = 1,
) -> dict:
    """Both steps timed on one trainer, each after `warmup` untimed steps; `sweep`: then each switch flipped in turn; `profile_decoder`:
    then a torch.profiler table of the decoder's backward pass (before the sweep: it is cheap, and a
    time limit that ends the sweep leaves it)."""
    from trainers.loop import Trainer

    if sweep_only is not None and (bad := [k for k in sweep_only if k.split("=", 1)[0] not in SWITCHES]):
        raise ValueError(f"--sweep-only: unknown switch(es) {bad}; valid are {', '.join(SWITCHES)}")
    resident = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    cfg = load_config(["model=tiny", "schedule=joint", "train.out_dir=runs/bench_step", *overrides])
    from trainers.backbone_trainer import BackboneTrainer
    from trainers.backbones import backbone_name

    # model=ltx-tiny|ltx-full-random: the same two steps through the backbone interface
    trainer = (Trainer if backbone_name(cfg.model) == "svd" else BackboneTrainer)(cfg)
    build_s = time.perf_counter() - t0
    batch = next(iter(trainer.loader))
    result = {}
    for name, feat_from in (("diffusion", None), ("lsa", 1)):
        cfg.schedule.feat_from_epoch = feat_from
        result[name] = _measure(trainer, batch, steps, warmup)
    if profile_decoder:
        from benchmark.perf.decoder_profile import profile_decoder_backward

        try:
            result["decoder_profile"] = profile_decoder_backward(trainer, batch)
        except KeyboardInterrupt:  # a time limit: keep the step figures
            result["decoder_profile"] = {"error": "interrupted (time limit)"}
            sweep = False
    if sweep:
        result["sweep"] = sweep_switches(trainer, batch, sweep_steps, sweep_only, warmup)
    result["build_s"] = build_s
    result["resident_before_gib"] = resident  # GPU memory still held from earlier work (should be ~0)
    device = trainer.acc.device
    frames = batch["frames"]
    result["lsa_over_diffusion"] = result["lsa"]["median_s"] / result["diffusion"]["median_s"]
    result["setting"] = dict(
        model=cfg.model.name,
        frames=list(frames.shape[1:]),
        batch=frames.shape[0],
        adapter=cfg.adapter.name,
        mixed_precision=cfg.train.mixed_precision,
        grad_checkpointing=cfg.train.grad_checkpointing,
        decode_chunk=cfg.loss.decode_chunk,
        decode_checkpoint=cfg.loss.decode_checkpoint,
        decode_frames=cfg.loss.decode_frames,
        dino_attention=cfg.loss.dino_attention,
        decode_channels_last=cfg.loss.decode_channels_last,
        cudnn_benchmark=cfg.train.cudnn_benchmark,
        real_feature_cache=cfg.loss.real_feature_cache,
        adam_fused=cfg.train.adam_fused,
        optimizer=cfg.train.optimizer,
        sdpa_backend=cfg.train.sdpa_backend,
        decode_attention=cfg.loss.decode_attention,
        decode_checkpoint_level=cfg.loss.decode_checkpoint_level,
        dino_size=list(trainer.feat_loss.encoder.input_size(*frames.shape[-2:])),
        compile=list(cfg.train.compile),
        steps=steps,
        overrides=overrides,
    )
    result["device"] = device_name(device)
    result["memory_kind"] = memory_kind(device)
    result["versions"] = versions()
    return result


# ------------------------------------------------------------------ one switch at a time


def _unet_module(trainer):
    """The diffusers U-Net inside the (accelerate / peft) wrappers: it holds the checkpointing switch."""
    from diffusers import UNetSpatioTemporalConditionModel

    return next(m for m in trainer.unet.modules() if isinstance(m, UNetSpatioTemporalConditionModel))


def _set_grad_checkpointing(trainer, on: bool):
    unet = _unet_module(trainer)
    unet.enable_gradient_checkpointing() if on else unet.disable_gradient_checkpointing()


def _variants(trainer):
    """(name, setting, apply(), undo()) for each switch of docs/perf.md, flipped from the configured
    setting of the LSA step. Each runs on the same trainer, model and batch as the baseline."""
    from trainers.loop import set_attention

    cfg, loss = trainer.cfg, trainer.cfg.loss
    T = trainer.cfg.data.clip_len

    def set_key(node, key, value):
        old = node[key]
        return (lambda: node.__setitem__(key, value)), (lambda: node.__setitem__(key, old))

    ckpt = bool(loss.decode_checkpoint)
    yield ("loss.decode_checkpoint", not ckpt, *set_key(loss, "decode_checkpoint", not ckpt))
    chunk = T if int(loss.decode_chunk) != T else 8
    yield ("loss.decode_chunk", chunk, *set_key(loss, "decode_chunk", chunk))
    gc_on = bool(cfg.train.grad_checkpointing)
    yield (
        "train.grad_checkpointing",
        not gc_on,
        lambda: _set_grad_checkpointing(trainer, not gc_on),
        lambda: _set_grad_checkpointing(trainer, gc_on),
    )
    attn = loss.dino_attention
    other = "eager" if attn == "sdpa" else "sdpa"
    yield (
        "loss.dino_attention",
        other,
        lambda: set_attention(trainer.dino, other),
        lambda: set_attention(trainer.dino, attn),
    )
    fl = trainer.feat_loss
    if not fl.cache_real:

        def cache_on():
            fl.cache_real = True
            fl.cache.clear()

        def cache_off():
            fl.cache_real = False
            fl.cache.clear()

        yield ("loss.real_feature_cache", True, cache_on, cache_off)  # the warm-up step fills it
    bench_on = bool(cfg.train.cudnn_benchmark)

    def cudnn(on):
        return lambda: setattr(torch.backends.cudnn, "benchmark", on)

    yield ("train.cudnn_benchmark", not bench_on, cudnn(not bench_on), cudnn(bench_on))
    from trainers.decoder_speed import set_channels_last

    decoder = trainer.parts.vae.decoder
    cl = bool(loss.decode_channels_last)
    apply_cl, undo_cl = set_key(loss, "decode_channels_last", not cl)
    yield (
        "loss.decode_channels_last",
        not cl,
        lambda: (apply_cl(), set_channels_last(decoder, not cl)),
        lambda: (undo_cl(), set_channels_last(decoder, cl)),
    )
    from trainers.decoder_speed import block_checkpoint, set_decoder_attention, set_decoder_block_checkpointing

    vae = trainer.parts.vae
    if loss.decode_checkpoint:  # the level matters only when the decoder is checkpointed
        level = loss.decode_checkpoint_level
        other = "blocks" if level == "chunk" else "chunk"

        def set_level(v):
            def apply():
                loss.decode_checkpoint_level = v
                set_decoder_block_checkpointing(vae, block_checkpoint(loss))

            return apply

        yield ("loss.decode_checkpoint_level", other, set_level(other), set_level(level))
    att = loss.decode_attention
    other = "eager" if att == "sdpa" else "sdpa"
    yield (
        "loss.decode_attention",
        other,
        lambda: set_decoder_attention(vae, other),
        lambda: set_decoder_attention(vae, att),
    )
    # a compiled part keeps the attention kernel it was traced with: only an eager setting can say
    # what restricting the kernels changes
    if not cfg.train.compile:
        backend = cfg.train.sdpa_backend
        for other in ("flash", "efficient", "cudnn") if trainer.acc.device.type == "cuda" else ("math",):
            if other != backend:
                yield ("train.sdpa_backend", other, *set_key(cfg.train, "sdpa_backend", other))
    # the optimizer's states (the offloading optimizer hooks every parameter for good: not a sweep row)
    for other in ("adamw", "adamw8bit"):
        if other != cfg.train.optimizer:
            yield ("train.optimizer", other, *_swap_optimizer(trainer, other))
    # the approximations (recorded as such, with their gradient against the baseline's): decode (and
    # compare) only every k-th frame; DINOv2 on a smaller input (about half the patches)
    if loss.decode_frames in (None, "all"):
        for k in (2, 5):
            yield ("loss.decode_frames", f"every_k:{k}", *set_key(loss, "decode_frames", f"every_k:{k}"))
    else:
        yield ("loss.decode_frames", "all", *set_key(loss, "decode_frames", "all"))
    enc, fl = trainer.feat_loss.encoder, trainer.feat_loss
    size = enc.size
    h, w = enc.input_size(int(cfg.data.height), int(cfg.data.width))
    p = enc.patch
    small = [max(p, round(h / 2**0.5 / p) * p), max(p, round(w / 2**0.5 / p) * p)]

    def set_size(v):
        def apply():
            enc.size = v
            fl.cache.clear()  # cached real features are of the other size

        return apply

    yield ("loss.dino_size", small, set_size(small), set_size(size))
    # compilation last: a compiled part stays compiled, so each row adds one part to the previous
    # (the decoder first: it dominates the added time)
    compiled = list(cfg.train.compile)
    for part, module in (("vae_decoder", decoder), ("dino", trainer.dino)):
        if part not in compiled:
            compiled = compiled + [part]
            yield ("train.compile", list(compiled), module.compile, lambda: None)


def _swap_optimizer(trainer, choice: str):
    """(apply, undo) replacing the trainer's optimizer by a fresh `choice` one for a sweep row. The
    configured optimizer's states wait on the CPU meanwhile, so the row's peak memory holds the new
    states only."""
    from omegaconf import OmegaConf

    from trainers.optim import build_optimizer

    old, held = trainer.optimizer, {}

    def move(device):
        inner = getattr(old, "optimizer", old)
        for st in inner.state.values():
            for k, v in st.items():
                if torch.is_tensor(v) and v.dim():
                    st[k] = v.to(device)

    def apply():
        params = [p for p in trainer.unet.parameters() if p.requires_grad]
        held["device"] = params[0].device
        t = OmegaConf.merge(trainer.cfg.train, {"optimizer": choice})
        new = build_optimizer(params, t)  # may raise (a missing extra): nothing changed yet
        move("cpu")
        trainer.optimizer = new

    def undo():
        if trainer.optimizer is not old:
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.optimizer = old
            if "device" in held:
                move(held["device"])

    return apply, undo


GRAD_STEP = 10**6  # the micro-step whose randomness (sigma, noise, dropout) every gradient comparison uses


def lsa_gradients(trainer, batch, offload: bool = False) -> dict:
    """The U-Net's gradient on `batch` with fixed randomness: of the objective as trained
    (w_diff L_diff + lambda L_feat) and of the L_feat term alone, with L_feat's value. The gradients
    are taken out of the parameters (no copy; `offload`: moved to the CPU, so that a reference held
    across later timed steps does not count in their peak memory); nothing is stepped."""
    from trainers.loop import step_generator

    cfg = trainer.cfg
    params = [p for p in trainer.unet.parameters() if p.requires_grad]
    out = {}
    old_w, old_from = cfg.loss.diff_weight, cfg.schedule.feat_from_epoch
    cfg.schedule.feat_from_epoch = 1
    try:
        for name, w_diff in (("total", old_w), ("feat", 0.0)):
            cfg.loss.diff_weight = w_diff
            trainer.optimizer.zero_grad(set_to_none=True)
            loss, terms = trainer.compute_loss(batch, step_generator(0, GRAD_STEP))
            trainer.acc.backward(loss)
            out[name] = [(p.grad.to("cpu") if offload and p.grad is not None else p.grad) for p in params]
            for p in params:
                p.grad = None
            out["loss_feat"] = terms["loss_feat"]
    finally:
        cfg.loss.diff_weight, cfg.schedule.feat_from_epoch = old_w, old_from
    return out


def _cosine(a: list, b: list) -> float:
    dot = na = nb = 0.0
    for x, y in zip(a, b):
        if x is None or y is None:
            x = torch.zeros(()) if x is None else x
            y = torch.zeros(()) if y is None else y
        y = y.to(x.device)
        dot += float(torch.sum(x.float() * y.float(), dtype=torch.float64))
        na += float(torch.sum(x.float() ** 2, dtype=torch.float64))
        nb += float(torch.sum(y.float() ** 2, dtype=torch.float64))
    return dot / ((na * nb) ** 0.5) if na > 0 and nb > 0 else float("nan")


def gradient_fidelity(reference: dict, other: dict) -> dict:
    """How far an approximation's gradient is from the reference (exact) one on the same batch and
    randomness: cosine similarity of the flattened U-Net gradients (of the trained objective, and of
    the L_feat term alone) and the relative difference of L_feat."""
    ref_f = reference["loss_feat"]
    return dict(
        grad_cosine=_cosine(reference["total"], other["total"]),
        feat_grad_cosine=_cosine(reference["feat"], other["feat"]),
        loss_feat_rel_diff=abs(other["loss_feat"] - ref_f) / abs(ref_f) if ref_f else float("nan"),
    )


def time_optimizer(trainer, fused: bool, steps: int = 3) -> dict:
    """AdamW.step alone, fused or foreach, on the trainer's trainable parameters with their gradients
    (CUDA: the fused kernel exists there only). The steps change the weights: call it last."""
    params = [p for p in trainer.unet.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    t = trainer.cfg.train
    kw = {"fused": True} if fused else {"foreach": True}
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas), **kw)
    times = []
    try:
        for k in range(steps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            torch.cuda.synchronize()
            if k:
                times.append(time.perf_counter() - t0)
    finally:
        del opt
        for p in params:
            p.grad = None
    return dict(median_s=statistics.median(times), times_s=times)


def _value_str(v) -> str:
    """A sweep row's value as --sweep-only names it: every_k:5, [224,364], True, [vae_decoder,dino]."""
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def sweep_switches(trainer, batch, steps: int, only: list[str] | None = None, warmup: int = 1) -> list[dict]:
    """The LSA step with each switch flipped in turn (then restored). A setting that runs out of
    GPU memory is recorded as such, not fatal. `only`: the switch names to flip (default: all)."""
    trainer.cfg.schedule.feat_from_epoch = 1
    out, reference = [], None
    for name, value, apply, undo in _variants(trainer):
        if only is not None and name not in only and f"{name}={_value_str(value)}" not in only:
            continue
        row = dict(switch=name, value=value)
        try:
            if name in APPROXIMATIONS and reference is None:  # the baseline's gradient, once
                reference = lsa_gradients(trainer, batch, offload=True)
            t0 = time.perf_counter()
            apply()
            row.update(_measure(trainer, batch, steps, warmup))
            row["first_step_s"] = time.perf_counter() - t0 - sum(row["times_s"])  # incl. compilation
            if name in APPROXIMATIONS:
                row["approximation"] = True
                row.update(gradient_fidelity(reference, lsa_gradients(trainer, batch)))
        except torch.cuda.OutOfMemoryError as e:
            row.update(error=f"out of memory: {str(e).splitlines()[0]}")
            trainer.optimizer.zero_grad(set_to_none=True)
        except (ImportError, ValueError, RuntimeError) as e:  # a missing extra, a kernel that does not apply
            row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            trainer.optimizer.zero_grad(set_to_none=True)
        except KeyboardInterrupt:  # a time limit (timeout --signal=INT): keep the rows measured so far
            out.append(dict(row, error="interrupted (time limit)"))
            return out  # (after `finally` has undone the flip)
        finally:
            undo()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        out.append(row)
        fid = (
            f", grad cosine {row['grad_cosine']:.4f} (L_feat alone {row['feat_grad_cosine']:.4f}), "
            f"L_feat {row['loss_feat_rel_diff']:.2%} off"
            if "grad_cosine" in row
            else ""
        )
        print(
            f"  sweep {name}={value}: "
            + (
                f"{row['median_s'] * 1e3:.1f} ms, peak {row['peak_mem_gib']:.2f} GiB{fid}"
                if "median_s" in row
                else row["error"]
            ),
            flush=True,
        )
    del reference
    if trainer.acc.device.type == "cuda" and (only is None or "train.adam_fused" in only):  # CUDA-only kernel
        fused = bool(trainer.cfg.train.adam_fused)
        for f in (fused, not fused):
            try:
                out.append(dict(switch="train.adam_fused", value=f, optimizer_step=True, **time_optimizer(trainer, f)))
            except torch.cuda.OutOfMemoryError as e:
                out.append(
                    dict(
                        switch="train.adam_fused",
                        value=f,
                        optimizer_step=True,
                        error=f"out of memory: {str(e).splitlines()[0]}",
                    )
                )
            torch.cuda.empty_cache()
    return out


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmark.perf.step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args, overrides = ap.parse_known_args(argv)
    r = bench(overrides, args.steps)
    d, lsa = r["diffusion"], r["lsa"]
    print(f"device: {r['device']}  setting: {r['setting']}")
    print(f"diffusion step: {d['median_s'] * 1e3:.1f} ms median, peak {d['peak_mem_gib']:.2f} GiB ({r['memory_kind']})")
    print(f"LSA step:       {lsa['median_s'] * 1e3:.1f} ms median, peak {lsa['peak_mem_gib']:.2f} GiB")
    print(f"LSA / diffusion: {r['lsa_over_diffusion']:.2f}x")
    if args.out:
        from data.atomic import atomic_write_json

        out = atomic_write_json(args.out, r)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
