"""Composing the benchmark's configs with Hydra's compose API (inputs are checked by benchmark/preflight.py).

A row's config = `configs/train.yaml` + the profile `configs/benchmark/<profile>.yaml` (which also
selects `configs/metrics/<...>.yaml`) + the command line's overrides + the row's overrides.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from benchmark.stages import split_override
from data.cli import MissingFile

# One class for every user-facing configuration problem (unknown profile, bad override, composition
# failure, a value of the wrong type or out of range): trainers/config_schema.py's.
from trainers.config_schema import ConfigError, compose_error

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def config_root(config_dir: str | Path | None = None, config_module: str = "configs") -> Path:
    if config_dir is not None:
        return Path(config_dir).resolve()
    return Path(importlib.import_module(config_module).__file__).resolve().parent


def list_profiles(config_dir: str | Path | None = None) -> list[str]:
    """Profiles = configs/benchmark/*.yaml, except the `_`-prefixed shared pieces."""
    folder = config_root(config_dir) / "benchmark"
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


class HydraResolver:
    """Resolves row overrides into plain-dict configs through Hydra's compose API."""

    def __init__(
        self,
        profile: str = "smoke",
        overrides: Sequence[str] = (),
        config_dir: str | Path | None = None,
        config_module: str = "configs",
        config_name: str = "train",
    ):
        self.config_dir = config_dir
        self.config_module = config_module
        self.config_name = config_name
        root = config_root(config_dir, config_module)
        if not (root / f"{config_name}.yaml").exists():
            raise MissingFile(
                f"{root / (config_name + '.yaml')} not found: the benchmark composes the "
                f"trainer's config tree (configs/{config_name}.yaml)"
            )
        profiles = list_profiles(root)
        profile, overrides = rehearsal_profile(profile, overrides)
        if profile not in profiles:
            raise ConfigError(
                f"unknown profile {profile!r}; valid profiles: {', '.join(profiles)} (configs/benchmark/*.yaml)"
            )
        self.profile = profile
        self.user_overrides = list(overrides)
        for ov in self.user_overrides:
            try:
                split_override(ov)  # fail early on a malformed key=value
            except ValueError as e:
                raise ConfigError(str(e)) from e
        self.foundation = {}  # foundation parts the resolved configs name (benchmark/foundation.py)
        self.base = self.resolve([])

    def resolve(self, overrides: list[str]) -> dict:
        from hydra import compose, initialize_config_dir, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        row_keys = {split_override(o)[0] for o in overrides}
        # The row's own keys win (a table defines its rows); Hydra rejects two values for one group.
        user = [o for o in self.user_overrides if split_override(o)[0] not in row_keys]
        ignored = [o for o in self.user_overrides if o not in user]
        # ctrlv.* keys exist only in the Ctrl-V stages' configs (+ctrlv=base): the other rows skip them
        if not any(o.startswith("+ctrlv=") for o in overrides):
            user = [o for o in user if not split_override(o)[0].startswith("ctrlv.")]
        if ignored:
            warnings.warn(
                f"command-line overrides {ignored} are ignored for a row that sets these keys itself", stacklevel=2
            )
        GlobalHydra.instance().clear()
        init = (
            initialize_config_dir(str(Path(self.config_dir).resolve()), version_base="1.3")
            if self.config_dir is not None
            else initialize_config_module(self.config_module, version_base="1.3")
        )
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        all_overrides = [f"+benchmark={self.profile}"] + user + list(overrides)
        try:
            with init:
                cfg = compose(config_name=self.config_name, overrides=all_overrides)
            resolved = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise compose_error(e, all_overrides) from e
        # foundation:<part> values (profile=mini) become the parts' content-hashed folders
        from benchmark.foundation import resolve as resolve_foundation

        try:
            resolved, parts = resolve_foundation(resolved)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.foundation.update(parts)
        return resolved


# ------------------------------------------------------------------------------------ hub ids
# (the checks of weight and dataset paths before any work: benchmark/preflight.py)


REHEARSAL_FLAG = "benchmark.rehearsal"


def rehearsal_profile(profile: str, overrides: Sequence[str]) -> tuple[str, list[str]]:
    """`profile=paper benchmark.rehearsal=true` is `profile=rehearsal` (configs/benchmark/rehearsal.yaml,
    which inherits paper): (profile, the overrides without the flag)."""
    rest, on = [], None
    for ov in overrides:
        if "=" in ov and ov.split("=", 1)[0].lstrip("+") == REHEARSAL_FLAG:
            on = ov.split("=", 1)[1].strip().lower() in ("true", "1", "yes")
        else:
            rest.append(ov)
    if on is None:
        return profile, list(overrides)
    if on and profile not in ("paper", "rehearsal"):
        raise ConfigError(
            f"benchmark.rehearsal=true rehearses the paper profile; profile={profile} has its own sizes "
            "(use profile=paper or profile=rehearsal, or a profile whose defaults start from paper)"
        )
    if not on and profile == "rehearsal":
        raise ConfigError("profile=rehearsal with benchmark.rehearsal=false: use profile=paper")
    return ("rehearsal" if on else profile), rest


def _looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~"))
