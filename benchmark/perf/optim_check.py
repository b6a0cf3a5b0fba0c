"""Does an optimizer variant change the training outcome? The same run (same seed, data, sigma and
noise draws) with train.optimizer=adamw and with a variant (default adamw8bit), compared on the
loss curves and on the final L_feat.

    python -m benchmark.perf.optim_check [--steps 300] [--optimizers adamw,adamw8bit] [--out FILE] [key=value ...]

`key=value` are trainer overrides (configs/train.yaml); the default is the tiny CPU model at the
joint schedule (L_feat on from the first step). Reported per variant, against the first optimizer:
- `max_rel_diff_loss`: the largest |l_v(t) - l_ref(t)| / |l_ref(t)| over the steps (per step: both
  runs draw the same sigma and noise, so the curves are paired; single steps are noisy);
- `max_rel_diff_loss_smoothed`: the same over a moving mean of `--window` steps;
- `final_loss_feat_rel_diff`: the relative difference of L_feat averaged over the last 10% of steps.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np


def _curves(run_dir: Path) -> dict[str, np.ndarray]:
    recs = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines() if ln.strip()]
    return {k: np.array([r[k] for r in recs], float) for k in ("loss", "loss_diff", "loss_feat") if k in recs[0]}


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(x)))
    return np.convolve(x, np.ones(window) / window, mode="valid")


def _max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), 1e-12)))


def compare_curves(ref: dict, other: dict, window: int = 10) -> dict:
    n = min(len(ref["loss"]), len(other["loss"]))
    tail = max(1, math.ceil(n / 10))
    f_ref, f_oth = ref["loss_feat"][n - tail : n].mean(), other["loss_feat"][n - tail : n].mean()
    return dict(
        steps=n,
        max_rel_diff_loss=_max_rel(other["loss"][:n], ref["loss"][:n]),
        max_rel_diff_loss_smoothed=_max_rel(_smooth(other["loss"][:n], window), _smooth(ref["loss"][:n], window)),
        max_rel_diff_loss_feat=_max_rel(other["loss_feat"][:n], ref["loss_feat"][:n]),
        final_loss_feat=float(f_oth),
        final_loss_feat_ref=float(f_ref),
        final_loss_feat_rel_diff=float(abs(f_oth - f_ref) / abs(f_ref)),
        window=window,
        tail_steps=tail,
    )


def _state_8bit_fraction(trainer) -> float:
    """Share of the trainable parameters whose optimizer states are 8-bit (bitsandbytes keeps
    tensors under 4096 elements in float32)."""
    import torch

    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    n8 = sum(
        p.numel()
        for p, st in opt.state.items()
        if any(torch.is_tensor(v) and v.dtype == torch.uint8 for v in st.values())
    )
    total = sum(p.numel() for p in trainer.unet.parameters() if p.requires_grad)
    return n8 / total if total else 0.0


def run_one(overrides: list[str], optimizer: str, steps: int, out_dir: Path) -> dict:
    from trainers.config import load_config
    from trainers.loop import Trainer

    clips = min(steps, 16)
    cfg = load_config(
        [
            "model=tiny",
            "schedule=joint",
            f"data.train.num_clips={clips}",
            f"train.epochs={math.ceil(steps / clips)}",
            *overrides,
            f"train.optimizer={optimizer}",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={10**9}",
            "train.resume=never",
            f"train.out_dir={out_dir / optimizer}",
        ]
    )
    trainer = Trainer(cfg)
    trainer.train()
    return dict(
        curves=_curves(out_dir / optimizer),
        state_8bit_fraction=_state_8bit_fraction(trainer),
        model=cfg.model.name,
        frames=[int(cfg.data.clip_len), int(cfg.data.height), int(cfg.data.width)],
    )


def compare_optimizers(
    overrides: list[str], steps: int, optimizers=("adamw", "adamw8bit"), window: int = 10, work_dir: str | None = None
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(work_dir or tmp)
        runs = {o: run_one(overrides, o, steps, out) for o in optimizers}
    ref = runs[optimizers[0]]
    res = dict(
        reference=optimizers[0], steps=steps, overrides=overrides, model=ref["model"], frames=ref["frames"], variants={}
    )
    for o in optimizers[1:]:
        res["variants"][o] = dict(
            compare_curves(ref["curves"], runs[o]["curves"], window), state_8bit_fraction=runs[o]["state_8bit_fraction"]
        )
    res["curves"] = {o: {k: v.tolist() for k, v in r["curves"].items()} for o, r in runs.items()}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmark.perf.optim_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--optimizers", default="adamw,adamw8bit", help="the first is the reference")
    ap.add_argument("--window", type=int, default=10, help="moving-mean window of the smoothed comparison")
    ap.add_argument("--out", default=None, help="write the result (with both curves) as JSON here")
    args, overrides = ap.parse_known_args(argv)
    opts = tuple(o for o in args.optimizers.split(",") if o)
    if len(opts) < 2:
        ap.error("--optimizers: name a reference and at least one variant, e.g. adamw,adamw8bit")
    res = compare_optimizers(overrides, args.steps, opts, args.window)
    for o, v in res["variants"].items():
        print(
            f"{o} vs {res['reference']} ({res['model']}, {v['steps']} steps, frames {res['frames']}): "
            f"loss max rel diff {v['max_rel_diff_loss']:.2e} per step, {v['max_rel_diff_loss_smoothed']:.2e} "
            f"smoothed over {v['window']}; final L_feat {v['final_loss_feat']:.5g} vs {v['final_loss_feat_ref']:.5g} "
            f"(rel diff {v['final_loss_feat_rel_diff']:.2e}); {v['state_8bit_fraction']:.1%} of the parameters have 8-bit states"
        )
    if args.out:
        from data.atomic import atomic_write_json

        print(f"wrote {atomic_write_json(args.out, res)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
