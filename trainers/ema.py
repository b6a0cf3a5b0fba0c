"""EMA of the trained weights (train.ema): diffusers' `EMAModel` over the trainable parameters.

The average is taken after every optimizer step (as diffusers' training scripts do), with
EMAModel's own ramp: the decay at step n is min(train.ema.decay, (1 + n) / (10 + n)), so the early
average is not dominated by the initial weights. Its state (the shadow weights and the step count)
is registered with accelerate, so it is saved in and restored from every checkpoint with the
weights and the optimizer. At the end of a run the averaged weights are exported beside the
trained ones as `<run>/unet_ema` (LoRA merged, the same diffusers folder as `<run>/unet`).
"""

from __future__ import annotations

import contextlib

import torch


def build_ema(params, t, device):
    """An EMAModel over `params` (the trainable ones) when `t.ema.enabled`, else None."""
    ema_cfg = t.get("ema") or {}
    if not ema_cfg.get("enabled", False):
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(list(params), decay=float(ema_cfg.get("decay", 0.9999)))
    ema.to(device)
    return ema


@contextlib.contextmanager
def ema_weights(ema, params):
    """Within the block, `params` hold the EMA weights; afterwards their own again (bit-exact: the
    trained weights are kept as a copy and copied back). A no-op when `ema` is None."""
    if ema is None:
        yield
        return
    params = list(params)
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer and the EMA follow, in module order."""
    return [p for p in module.parameters() if p.requires_grad]
