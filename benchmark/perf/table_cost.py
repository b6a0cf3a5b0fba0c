"""A table's step-cost column (`source: perf`, Table VII): each row's training step against the
diffusion step, timed in ONE process on ONE trainer of the tiny model by the perf harness
(benchmark/perf/step.py's `time_steps`: forward + backward + optimizer steps, after warm-up).

The rows differ only in their feature loss: for each row the trainer's objective gets that row's
`loss` node and feature loss (LSA's decode + DINOv2, or the REPA / TRD projector on the hooked
block), then diffusion-only steps and the row's steps are timed in alternation (d, r, d, r, ...), and
the row's cost is the median of the per-pair ratios r / d: on a shared CPU whose speed drifts with
the other jobs, each ratio compares two steps taken seconds apart. A row that trains with the diffusion loss only
(schedule=diffusion: "fine-tuned") costs 1 by definition. The model is `model=tiny` on synthetic clips
(the CPU's tiny U-Net, decoder and DINOv2; a GPU when there is one): the ratios check the relative
cost of the losses' machinery, not the paper-scale cost (docs/perf.md).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile

from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

SETTING = ["model=tiny", "data=synthetic", "data.train.num_clips=2", "schedule=joint"]


def paired_ratio(trainer, batch, steps: int, warmup: int) -> dict:
    """Median over `steps` pairs of (row step / diffusion step), the two steps of a pair back to back."""
    from benchmark.perf.step import time_steps

    sched = trainer.cfg.schedule
    d_s, r_s = [], []
    for k in range(warmup + steps):
        sched.feat_from_epoch = None
        d = time_steps(trainer, batch, 1, warmup=0)[0][0]
        sched.feat_from_epoch = 1
        r = time_steps(trainer, batch, 1, warmup=0)[0][0]
        if k >= warmup:
            d_s.append(d)
            r_s.append(r)
    return {
        "ratio": statistics.median(r / d for r, d in zip(r_s, d_s)),
        "diffusion_s": statistics.median(d_s),
        "step_s": statistics.median(r_s),
        "pairs_s": [[d, r] for d, r in zip(d_s, r_s)],
    }


def row_step_costs(rows: dict[str, dict | None], steps: int = 5, warmup: int = 1, overrides=()) -> dict:
    """{row: {"ratio", "diffusion_s", "step_s", ...}} for `rows` = {row: its resolved `loss` node, or
    None for a diffusion-only row}, plus "_setting" (device, frames, steps)."""
    from benchmark.perf.step import device_name
    from trainers.alignment import build_feature_loss
    from trainers.config import load_config
    from trainers.loop import Trainer, _size
    from trainers.losses import DinoFeatures

    out_dir = tempfile.mkdtemp(prefix="lsa-step-cost-")
    try:
        cfg = load_config([*SETTING, f"train.out_dir={out_dir}", *overrides])
        trainer = Trainer(cfg)
        batch = next(iter(trainer.loader))
        out = {}
        for name, loss in rows.items():
            if loss is None:
                out[name] = {"ratio": 1.0, "by_definition": True}
                continue
            with open_dict(cfg):
                cfg.loss = OmegaConf.merge(cfg.loss, {k: v for k, v in loss.items() if k in cfg.loss})
            c = cfg.loss
            enc = DinoFeatures(trainer.dino, _size(c.dino_size), c.dino_mean, c.dino_std)
            trainer.objective.L_feat = build_feature_loss(cfg, enc)
            out[name] = dict(paired_ratio(trainer, batch, steps, warmup), variant=str(c.variant))
            log.info(
                "step cost of %s (loss.variant=%s): %.1f ms vs diffusion %.1f ms (medians), median ratio %.2fx",
                name,
                c.variant,
                out[name]["step_s"] * 1e3,
                out[name]["diffusion_s"] * 1e3,
                out[name]["ratio"],
            )
        frames = batch["frames"]
        out["_setting"] = {
            "device": device_name(trainer.acc.device),
            "model": str(cfg.model.name),
            "frames": list(frames.shape[1:]),
            "batch": int(frames.shape[0]),
            "steps": steps,
            "warmup": warmup,
        }
        return out
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def graph_step_costs(graph) -> dict:
    """The step costs of a stage graph's rows (first seed of each), from their resolved configs."""
    from benchmark.stages import select

    rows = {}
    for plan in graph.rows:
        if plan.row.name in rows or not plan.cfg:
            continue
        diffusion_only = select(plan.cfg, "schedule.feat_from_epoch", None) is None
        rows[plan.row.name] = None if diffusion_only else dict(plan.cfg.get("loss") or {})
    return row_step_costs(rows)


def caption_note(costs: dict) -> str | None:
    s = costs.get("_setting")
    if not s:
        return None
    return (
        f"Step cost: each row's training step / the diffusion step, median over {s['steps']} pairs of "
        f"steps timed back to back in one process by benchmark/perf on {s['model']} ({s['batch']} x "
        f"{'x'.join(map(str, s['frames']))}, {s['device']}), tiny random networks: the machinery's "
        f"relative cost, not the paper-scale one; fine-tuned = 1 by definition"
    )
