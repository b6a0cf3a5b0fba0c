"""python -m trainers.train model=tiny data=synthetic loss.variant=hybrid schedule=staged adapter=unet ..."""
from __future__ import annotations

import sys

from data.cli import command
from trainers.config import load_config


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("groups: model=tiny|svd|svd-xt|full-random|ltx-tiny|ltx|ltx-full-random  data=synthetic|kitti|nuscenes|folder  schedule=staged|joint|diffusion"
              "  adapter=unet|lora\nkeys: see configs/train.yaml (e.g. train.max_steps=10 loss.alpha=10)")
        return 0
    from trainers.config_schema import validate
    cfg = load_config(argv)
    validate(cfg)                               # types and ranges of every key, before any model loads
    from trainers.loop import train
    run_dir = train(cfg)
    from accelerate import PartialState
    if PartialState().is_main_process:          # once, also under `accelerate launch` with N processes
        print(f"run folder: {run_dir.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
