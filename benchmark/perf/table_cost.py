"""A table's step-cost column (`source: perf`, Table VII): each row's training step against the
diffusion step, timed in ONE process on ONE trainer of the tiny model by the perf harness
(benchmark/perf/step.py's `_measure`: median of forward + backward + optimizer step, after warm-up).

The rows differ only in their feature loss: for each row the trainer's objective gets that row's
`loss` node and feature loss (LSA's decode + DINOv2, or the REPA / TRD projector on the hooked
block), then the diffusion-only step and the row's step are timed back to back, so every ratio has
its own diffusion baseline from the same minute. A row that trains with the diffusion loss only
(schedule=diffusion: "fine-tuned") costs 1 by definition. The model is `model=tiny` on synthetic clips
(the CPU's tiny U-Net, decoder and DINOv2; a GPU when there is one): the ratios check the relative
cost of the losses' machinery, not the paper-scale cost (docs/perf.md).
"""

from __future__ import annotations

import logging
import shutil
import tempfile

from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)

SETTING = ["model=tiny", "data=synthetic", "data.train.num_clips=2", "schedule=joint"]


def row_step_costs(rows: dict[str, dict | None], steps: int = 3, warmup: int = 1, overrides=()) -> dict:
    """{row: {"ratio", "diffusion_s", "step_s", ...}} for `rows` = {row: its resolved `loss` node, or
    None for a diffusion-only row}, plus "_setting" (device, frames, steps)."""
    from benchmark.perf.step import _measure, device_name
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
            cfg.schedule.feat_from_epoch = None
            d = _measure(trainer, batch, steps, warmup)
            cfg.schedule.feat_from_epoch = 1
            r = _measure(trainer, batch, steps, warmup)
            out[name] = {
                "ratio": r["median_s"] / d["median_s"],
                "diffusion_s": d["median_s"],
                "step_s": r["median_s"],
                "variant": str(c.variant),
            }
            log.info(
                "step cost of %s (loss.variant=%s): %.1f ms vs diffusion %.1f ms = %.2fx",
                name,
                c.variant,
                r["median_s"] * 1e3,
                d["median_s"] * 1e3,
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
        f"Step cost: each row's training step / the diffusion step, medians of {s['steps']} steps timed "
        f"back to back in one process by benchmark/perf on {s['model']} ({s['batch']} x "
        f"{'x'.join(map(str, s['frames']))}, {s['device']}); fine-tuned = 1 by definition"
    )
