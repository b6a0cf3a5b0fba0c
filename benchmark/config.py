"""Composing the benchmark's configs with Hydra's compose API, and checking paths before any work.

A row's config = `configs/train.yaml` + the profile `configs/benchmark/<profile>.yaml` (which also
selects `configs/metrics/<...>.yaml`) + the command line's overrides + the row's overrides.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchmark.stages import select, split_override
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


# ------------------------------------------------------------------------------------ path checks
DETECTOR_KEYS = "benchmark.eval.detectors."


_ABSENT = object()  # select()'s default: the key is not in the config


def missing_paths(cfgs: Iterable[tuple]) -> list[str]:
    """Every path named by `benchmark.check_paths` in the given (row name, config[, detectors]) items
    that is not there, as one readable line each. With `detectors` (the names the row's evaluations
    use), the weights of the other `benchmark.eval.detectors` are not asked for: a DN-DETR-only table
    needs no YOLO file. check_paths has three lists:
      local         keys whose value must exist on disk (weights files, dataset folders)
      hub_or_local  keys that may also be Hugging Face hub ids ("org/name"): fine when cached, or when
                    the Hub is reachable (they download on first use); missing when HF_HUB_OFFLINE=1
                    and not cached
      allow         values that need no file (e.g. tiny, null)
    """
    problems: dict[tuple[str, str, str, str], list[str]] = {}
    for row, cfg, *used in cfgs:
        used = set(used[0]) if used else None
        spec = select(cfg, "benchmark.check_paths", {}) or {}
        if not isinstance(spec, dict):
            raise ConfigError("benchmark.check_paths must be a mapping with lists local, hub_or_local, allow")
        allow = set(spec.get("allow") or [])
        dataset = str(select(cfg, "data.name", ""))
        for kind in ("local", "hub_or_local"):
            for key in spec.get(kind) or []:
                detector = key[len(DETECTOR_KEYS) :].split(".")[0] if key.startswith(DETECTOR_KEYS) else None
                if used is not None and detector is not None and detector not in used:
                    continue
                ds = dataset if key.startswith("data.") else ""
                value = select(cfg, key, _ABSENT)
                if value is _ABSENT:
                    if key.startswith("model."):  # a key of another backbone (model.svd of an LTX row)
                        continue
                    problems.setdefault((kind, key, "<absent>", ds), []).append(row)
                    continue
                if value in allow or (value is not None and _present(str(value), hub=(kind == "hub_or_local"))):
                    continue
                problems.setdefault((kind, key, "<null>" if value is None else str(value), ds), []).append(row)
    lines = []
    for (kind, key, value, ds), rows in problems.items():
        name = f"{key} (data={ds})" if ds else key
        if value == "<absent>":
            why = "is not a key of the composed config (fix benchmark.check_paths or the config)"
        elif value == "<null>" and key == "data.root":
            why = (
                f"is not set: benchmark.data_roots.{ds}=/path/to/{ds} (or the environment variable the "
                f"profile names), or data.root=/path when every row uses this dataset"
            )
        elif value == "<null>":
            why = f"is not set (null): give it on the command line, {key}=/path"
        elif kind == "hub_or_local" and _looks_like_hub_id(value):
            why = (
                f"= {value}: not a local path, and as a hub id not in the local Hugging Face cache "
                f"(HF_HUB_OFFLINE is set): `huggingface-cli download {value}`, or set {key} to a local folder"
            )
        elif key.startswith("data."):
            why = f"= {value}: dataset folder not found (docs/data.md says how to get it)"
        else:
            why = f"= {value}: file not found (docs/metrics.md and docs/benchmark.md say where to get it)"
        lines.append(f"{name} {why}  [rows: {', '.join(sorted(set(rows)))}]")
    return lines


def _looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~"))


def _present(value: str, hub: bool) -> bool:
    if Path(value).expanduser().exists():
        return True
    if hub and _looks_like_hub_id(value):
        if not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("TRANSFORMERS_OFFLINE"):
            return True  # reachable Hub: from_pretrained downloads it on first use
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(value, local_files_only=True)
            return True
        except Exception:  # LocalEntryNotFoundError and friends: not cached
            return False
    return False
