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
