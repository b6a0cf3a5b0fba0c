"""python -m trainers.train [group=option ...] [key=value ...] [--cfg job]

Trains one model (the LSA objective, its ablations or plain fine-tuning) and exports its U-Net.
Every key of configs/train.yaml can be overridden (train.max_steps=10 loss.alpha=10 ...);
`--cfg job` prints the resolved config and stops (Hydra's convention). Installed as `lsa-bench train`.
"""

from __future__ import annotations

import sys

from data.cli import command
from trainers.config import group_choices, load_config, print_config_flag


def usage() -> str:
    groups = "\n".join(f"  {g}={'|'.join(opts)}" for g, opts in group_choices().items())
    return (
        f"{__doc__}\ngroups (configs/<group>/*.yaml; the first is the default):\n{groups}\n"
        "keys: see configs/train.yaml (e.g. train.max_steps=10 loss.alpha=10 train.report_to=tensorboard)"
    )


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    argv, show = print_config_flag(argv)
    from omegaconf import OmegaConf

    from trainers.config_schema import validate

    cfg = load_config(argv)
    validate(cfg)  # types and ranges of every key, before any model loads
    if show:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    from trainers.loop import train

    run_dir = train(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:  # once, also under `accelerate launch` with N processes
        print(f"run folder: {run_dir.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
