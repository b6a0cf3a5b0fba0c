"""python -m trainers.ctrlv.train stage=bbox|box2video variant=1-to-0|1-to-1|3-to-1 [key=value ...]

Trains one Ctrl-V stage with the LSA trainer's loop, model, data and epochs (configs/train.yaml +
configs/ctrlv/base.yaml). `stage=` and `variant=` are short for ctrlv.stage= and ctrlv.variant=; every
other argument is a Hydra override as for trainers.train, e.g.
    python -m trainers.ctrlv.train stage=bbox variant=3-to-1 data=kitti train.max_steps=10
    python -m trainers.ctrlv.train stage=box2video ctrlv.backbone=runs/train/<svd-finetuned>/unet
"""

from __future__ import annotations

import sys
from pathlib import Path

from data.cli import InputError, command
from trainers.config import load_config

SHORT = {"stage": "ctrlv.stage", "variant": "ctrlv.variant", "backbone": "ctrlv.backbone"}


def load_ctrlv_config(overrides: list[str] | None = None):
    """configs/train.yaml composed with the Ctrl-V group: load_config(["+ctrlv=base", *overrides])."""
    expanded = []
    for o in overrides or []:
        key, eq, value = o.partition("=")
        expanded.append(f"{SHORT[key]}={value}" if eq and key in SHORT else o)
    return load_config(["+ctrlv=base", *expanded])


def trainer_for(cfg):
    from trainers.ctrlv.bbox_generator import BBoxGeneratorTrainer
    from trainers.ctrlv.box2video import Box2VideoTrainer

    stages = {"bbox": BBoxGeneratorTrainer, "box2video": Box2VideoTrainer}
    if cfg.ctrlv.stage not in stages:
        raise InputError(f"ctrlv.stage={cfg.ctrlv.stage!r}: valid are {sorted(stages)}")
    return stages[cfg.ctrlv.stage](cfg)


def train_stage(cfg) -> Path:
    """Train the stage `cfg.ctrlv.stage`; the run folder holds unet/ (bbox) or controlnet/ (box2video)."""
    return trainer_for(cfg).train()


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    run_dir = train_stage(load_ctrlv_config(argv))
    print(f"run folder: {run_dir.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
