"""Composing the Hydra config tree in `configs/` (compose API: no working-dir changes, no output dirs)."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from trainers.config_schema import compose_error


def load_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """`overrides` as on the command line: ['model=tiny', 'loss.variant=box', ...]; a bad override is
    a user error naming it (data/cli.py)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise compose_error(e, overrides or []) from e


def group_choices(config_name: str = "train") -> dict[str, list[str]]:
    """The config groups `config_name` selects in its defaults list, each with the options found in
    `configs/<group>/` (the default first): what a command's help lists, never a hand-written copy."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        # Hydra lists the choices last-selected first: reversed, they follow the defaults list
        chosen = {
            g: c for g, c in reversed(list(cfg.hydra.runtime.choices.items())) if not g.startswith("hydra/") and c
        }
        return {g: [c] + [o for o in loader.get_group_options(g) if o != c] for g, c in chosen.items()}


def print_config_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """Hydra's `--cfg job` convention: (argv without the flag, "job") when it is there, else (argv, None).
    `--cfg` takes `job` only (the compose API has no Hydra runtime config to show)."""
    from data.cli import InputError

    if "--cfg" not in argv:
        return argv, None
    i = argv.index("--cfg")
    if i + 1 >= len(argv) or argv[i + 1] != "job":
        raise InputError("--cfg takes one value: job (print the resolved config and stop)")
    return argv[:i] + argv[i + 2 :], "job"
