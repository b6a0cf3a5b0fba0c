"""Cluster settings: the Hydra config group configs/slurm/, with per-stage-kind overrides.

`load_cluster(name)` composes `configs/slurm/<name>.yaml` with Hydra (a file starts from another one
through its defaults list, e.g. `defaults: [default, _self_]`); the command line changes any key
with a `slurm.` prefix (`slurm.job.partition=gpu`, `slurm.kinds.train.time_min=2880`), parsed by
Hydra's override grammar and set with OmegaConf.update. What one stage kind gets is `job` overlaid
with `kinds.<kind>`. Unknown keys are errors naming the file or the override, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from data.cli import UserError

GROUP = "slurm"
TOP_KEYS = {
    "folder",
    "chdir",
    "python",
    "array_parallelism",
    "poll_s",
    "max_num_timeout",
    "per_task_dependencies",
    "kill_on_invalid_dep",
    "job",
    "kinds",
    "accelerate",
}
JOB_KEYS = {
    "partition",
    "account",
    "qos",
    "constraint",
    "gpu_constraint",
    "gpu_mem_gb",
    "exclude",
    "time_min",
    "cpus_per_task",
    "gpus_per_task",
    "mem_gb",
    "signal_delay_s",
    "setup",
    "additional",
}
ACCELERATE_KEYS = {"main_process_port", "extra_args"}
PREFIX = "slurm."
GPU_REQUESTS = (
    "gres",
    "gpus",
    "gpu-bind",
    "gpu-freq",
    "mem-per-gpu",
    "cpus-per-gpu",
)  # sbatch options a CPU-only kind drops


class ClusterConfigError(UserError, ValueError):
    """A bad cluster config file or `slurm.` override (names the file or the override)."""


def config_root(config_dir: str | Path | None = None) -> Path:
    root = Path(config_dir) if config_dir is not None else Path(importlib.import_module("configs").__file__).parent
    return root.resolve()


def config_folder(config_dir: str | Path | None = None) -> Path:
    return config_root(config_dir) / GROUP


def list_clusters(config_dir: str | Path | None = None) -> list[str]:
    return sorted(p.stem for p in config_folder(config_dir).glob("*.yaml"))


def load_cluster(name: str = "default", overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> dict:
    """The cluster settings `name` (configs/slurm/<name>.yaml) with `slurm.key=value` overrides."""
    from omegaconf import OmegaConf

    folder = config_folder(config_dir)
    cfg = OmegaConf.create(_compose(config_root(config_dir), name))
    for ov in overrides:
        key, value = _parse_override(ov)
        try:
            OmegaConf.update(cfg, key[len(PREFIX) :], value, merge=False)
        except Exception as e:  # a scalar on the path: omegaconf says which
            raise ClusterConfigError(f"override {ov!r}: {e}") from e
    cfg = OmegaConf.to_container(cfg, resolve=True)
    _validate(
        cfg,
        where=f"{folder / (name + '.yaml')} with overrides {list(overrides)}"
        if overrides
        else str(folder / f"{name}.yaml"),
    )
    cfg["name"] = name
    return cfg


def kind_settings(cluster: dict, kind: str) -> dict:
    """What a job of this stage kind asks for: `job` overlaid with `kinds.<kind>`."""
    out = dict(cluster.get("job") or {})
    out.update((cluster.get("kinds") or {}).get(kind) or {})
    return out


def executor_parameters(
    settings: dict,
    *,
    name: str,
    array_parallelism: int,
    chdir: str | Path,
    pythonpath: str | Path,
    kill_on_invalid_dep: bool,
) -> dict:
    """submitit AutoExecutor.update_parameters(...) for one array of one stage kind.

    One task per job on one node: the GPUs of that task are asked for per node (--gpus-per-node),
    which is what `accelerate launch` with one process per GPU needs. A kind with GPUs also gets
    `gpu_constraint` (the site's node features of cards with `gpu_mem_gb` or more, ANDed with
    `constraint`); a CPU-only kind (gpus_per_task 0) asks for no GPU: no --gpus, no gpu_constraint,
    and no GPU request (gres, gpus*) it would inherit from job.additional.
    """
    additional = {"chdir": str(chdir)}
    if kill_on_invalid_dep:
        additional["kill-on-invalid-dep"] = "yes"
    additional.update(settings.get("additional") or {})
    gpus = int(settings.get("gpus_per_task") or 0)
    if not gpus:
        additional = {k: v for k, v in additional.items() if not k.replace("_", "-").startswith(GPU_REQUESTS)}
    # The job's python must import the project wherever it starts; its torch uses the CPUs it was given.
    setup = [
        f"export PYTHONPATH={_sh_quote(str(pythonpath))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
    ] + list(settings.get("setup") or [])
    params = {
        "name": name,
        "timeout_min": int(settings["time_min"]),
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": int(settings["cpus_per_task"]),
        "mem_gb": settings["mem_gb"],
        "slurm_signal_delay_s": int(settings["signal_delay_s"]),
        "slurm_setup": setup,
        "slurm_array_parallelism": int(array_parallelism),
        "slurm_additional_parameters": additional,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if settings.get(key) is not None:
            params[f"slurm_{key}"] = settings[key]
    if gpus and settings.get("gpu_constraint"):
        gc = str(settings["gpu_constraint"])
        params["slurm_constraint"] = f"({settings['constraint']})&({gc})" if settings.get("constraint") else gc
    return params


# ------------------------------------------------------------------------------------ helpers
def _compose(root: Path, name: str) -> dict:
    """configs/slurm/<name>.yaml and its defaults list, composed by Hydra (unresolved, as a dict)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = root / GROUP / f"{name}.yaml"
    if not path.is_file():
        raise ClusterConfigError(f"cluster={name}: {path} not found; clusters: {', '.join(list_clusters(root))}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(root), version_base="1.3"):
            cfg = compose(overrides=[f"+{GROUP}={name}"])
    except (HydraException, OmegaConfBaseException) as e:
        raise ClusterConfigError(f"{path}: {e}") from e
    finally:
        GlobalHydra.instance().clear()
    out = OmegaConf.to_container(cfg, resolve=False).get(GROUP) or {}
    if not isinstance(out, dict):
        raise ClusterConfigError(f"{path}: expected a mapping of settings")
    _validate(out, where=str(path), partial=True)
    return out


def _parse_override(ov: str):
    """`slurm.<key>=<value>` -> (key, value), the value parsed by Hydra's override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key, sep, _ = ov.partition("=")
    if not sep or not key.startswith(PREFIX):
        raise ClusterConfigError(f"override {ov!r}: cluster settings are given as slurm.<key>=<value>")
    try:
        parsed = OverridesParser.create().parse_override(ov)
    except HydraException as e:
        raise ClusterConfigError(f"override {ov!r}: the value does not parse ({e})") from e
    return key, parsed.value()


def _validate(cfg: dict, where: str, partial: bool = False) -> None:
    unknown = set(cfg) - TOP_KEYS - {"name"}
    if unknown:
        raise ClusterConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(TOP_KEYS)}")
    blocks = [("job", cfg.get("job") or {})] + [(f"kinds.{k}", v or {}) for k, v in (cfg.get("kinds") or {}).items()]
    for label, block in blocks:
        if not isinstance(block, dict):
            raise ClusterConfigError(f"{where}: {label} must be a mapping")
        bad = set(block) - JOB_KEYS
        if bad:
            raise ClusterConfigError(f"{where}: unknown key(s) {sorted(bad)} in {label}; valid: {sorted(JOB_KEYS)}")
    bad = set(cfg.get("accelerate") or {}) - ACCELERATE_KEYS
    if bad:
        raise ClusterConfigError(
            f"{where}: unknown key(s) {sorted(bad)} in accelerate; valid: {sorted(ACCELERATE_KEYS)}"
        )
    if partial:
        return
    missing = [k for k in ("time_min", "cpus_per_task", "mem_gb", "signal_delay_s") if k not in (cfg.get("job") or {})]
    if missing:
        raise ClusterConfigError(
            f"{where}: job.{', job.'.join(missing)} missing (`defaults: [default, _self_]` gives them)"
        )


def _sh_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
