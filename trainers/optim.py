"""The trainer's optimizer (train.optimizer): AdamW, AdamW with 8-bit states, or AdamW offloaded to the CPU.

All three run the same AdamW update (same lr, betas, weight decay); they differ in where and how
precisely the two moment estimates are kept:

- `adamw`: torch.optim.AdamW, float32 states on the device (8 bytes per trainable parameter).
- `adamw8bit`: bitsandbytes' AdamW8bit (as diffusers' training scripts' --use_8bit_adam): the
  moments block-wise quantised to 8 bits (2 bytes per parameter; tensors under 4096 elements keep
  float32 states). An approximation of the update: check it on the loss curve
  (benchmark/perf/optim_check.py) before relying on it.
- `adamw_offload`: torchao's CPUOffloadOptimizer: float32 states, master weights and the update
  on the CPU (CUDA only); each gradient is copied to the CPU as the backward pass produces it.

The last two need the `perf` extra (`pip install -e .[perf]`).
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "adamw_offload")


def _need(module: str, choice: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"train.optimizer={choice} needs the package {module!r}, which is not installed: "
            f"install the perf extra (pip install -e .[perf]) or use train.optimizer=adamw"
        ) from e


def build_optimizer(params, t) -> torch.optim.Optimizer:
    """The optimizer named by `t.optimizer` (t: the train config node) over `params`."""
    params = list(params)
    choice = t.get("optimizer", "adamw")
    kw = dict(lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.adam_betas))
    if choice == "adamw":
        return torch.optim.AdamW(params, **kw, **({"fused": True} if t.adam_fused else {}))
    if choice == "adamw8bit":
        bnb = _need("bitsandbytes", choice)
        return bnb.optim.AdamW8bit(params, **kw)
    if choice == "adamw_offload":
        if not torch.cuda.is_available() or not all(p.is_cuda for p in params):
            raise ValueError(
                "train.optimizer=adamw_offload moves the optimizer from the GPU to the CPU: it needs "
                "parameters on a CUDA device (use adamw or adamw8bit on the CPU)"
            )
        if t.get("max_grad_norm"):
            # the gradients reach the CPU in the backward hooks, before clip_grad_norm_ runs: the
            # clipping would silently not apply to the update
            raise ValueError(
                f"train.optimizer=adamw_offload with train.max_grad_norm={t.max_grad_norm}: the offloaded "
                "update sees the gradients before they are clipped; set train.max_grad_norm=null "
                "(a change of the method) or use another optimizer"
            )
        ao = _need("torchao.optim", choice)
        return ao.CPUOffloadOptimizer(params, torch.optim.AdamW, **kw)
    raise ValueError(f"train.optimizer={choice!r}: valid are {', '.join(OPTIMIZERS)}")


def state_bytes(optimizer) -> int:
    """Bytes of the tensors in the optimizer's state (0 before the first step). The offloading
    optimizer keeps its float32 states in CPU optimizers of its own: they do not count here."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return sum(
        v.numel() * v.element_size() for state in opt.state.values() for v in state.values() if torch.is_tensor(v)
    )


# diffusers.optimization.SchedulerType's values that need no extra arguments (piecewise_constant needs a rule string)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def build_lr_scheduler(optimizer, t, steps_per_epoch: int, num_processes: int = 1):
    """The learning-rate schedule of `t.lr_scheduler` through diffusers' `get_scheduler`, as diffusers'
    training scripts build it.

    Its horizon is `t.lr_schedule_epochs` (else `t.epochs`) epochs of `steps_per_epoch` optimizer
    steps, never `t.max_steps`: a cap that stops a run early must not change its learning rates, so a
    run stopped at step 3 and resumed to step 6 follows the uninterrupted run's schedule. accelerate's
    prepared scheduler steps once per process and optimizer step, hence the factor `num_processes`."""
    from diffusers.optimization import get_scheduler

    name, warmup = t.get("lr_scheduler", "constant"), int(t.get("lr_warmup_steps", 0) or 0)
    if name not in LR_SCHEDULERS:
        raise ValueError(f"train.lr_scheduler={name!r}: valid are {', '.join(LR_SCHEDULERS)}")
    if name == "constant" and warmup:
        # diffusers' constant schedule ignores the warm-up: say so instead of silently dropping it
        raise ValueError(
            f"train.lr_warmup_steps={warmup} with train.lr_scheduler=constant: the constant "
            "schedule has no warm-up; use train.lr_scheduler=constant_with_warmup"
        )
    epochs = t.get("lr_schedule_epochs") or t.epochs
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup * num_processes,
        num_training_steps=int(steps_per_epoch * epochs) * num_processes,
    )
