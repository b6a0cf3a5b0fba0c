"""python -m benchmark.run table=III [profile=...] [data=...] [launcher=...] [--dry-run] [--cfg job] [key=value ...]

Regenerates one paper table (or several: table=III,IV,V) end to end: expands it into stages
(test set, train epoch 1, epoch 2, generate, evaluate per detector), runs those not already in the
store, and writes results/<profile>/table_<N>.md, .tex, .json, figures and .html (a static report).

Options (everything else is a Hydra override of the composed config, e.g. data=kitti,
benchmark.num_test_clips=4, train.lr=2e-5):
  table=<name>[,..]        which table(s) (required): {tables}
  profile=<name>           configs/benchmark/<profile>.yaml (default smoke): {profiles}
  launcher=<name>          {launchers}: where stages run: here one by one (local), as SLURM job
                           arrays (slurm), or through the SLURM code path in this process (debug; docs/slurm.md)
  cluster=<name>           configs/slurm/<cluster>.yaml (default default: {clusters}): partition, account, GPUs, time per stage kind
                           (launcher=slurm); change keys with slurm.<key>=<value>, e.g. slurm.job.partition=gpu
  rows=a,b                 only these rows of the table
  store=runs               the stage store (runs/<hash>/)
  results=results          where tables and figures go (results/<profile>/)
  runner=module:Class      the StageRunner (default benchmark.trainer_runner:TrainerRunner)
  config_dir=PATH          compose from this config folder instead of the `configs` package
  --dry-run                print the stage graph (cached / pending; with launcher=slurm the job arrays) and stop
  --no-wait                launcher=slurm: submit and return; a render job writes the table when all jobs ended
  --list                   list tables, their rows and the profiles
  --cfg job                print each row's resolved config (without table=: the profile's) and stop
  groups of the trainer's config (group=option, e.g. data=kitti): {groups}
Installed as `lsa-bench run` (`lsa-bench --help` lists the other commands).
"""

from __future__ import annotations

import importlib
import sys

from ablations.registry import list_tables, load_table
from benchmark.run_table import StagesFailed
from data.cli import UserError, command

OPTIONS = {
    "table": None,
    "profile": "smoke",
    "launcher": "local",
    "rows": None,
    "store": "runs",
    "results": "results",
    "runner": "benchmark.trainer_runner:TrainerRunner",
    "config_dir": None,
    "cluster": "default",
}
FLAGS = {"--dry-run", "--list", "--no-wait", "-h", "--help"}
CLUSTER_PREFIX = "slurm."  # key=value with this prefix: a cluster setting, not a Hydra override


class UsageError(UserError):
    """A bad flag or argument of the command line."""


def parse_args(argv: list[str]) -> tuple[dict, set[str], list[str]]:
    opts, flags, overrides = dict(OPTIONS), set(), []
    for a in argv:
        if a.startswith("-"):
            if a not in FLAGS:
                raise UsageError(f"unknown flag {a}; flags: {', '.join(sorted(FLAGS))}")
            flags.add(a)
        elif "=" not in a:
            raise UsageError(f"argument {a!r} is not key=value (e.g. table=III)")
        else:
            k, v = a.split("=", 1)
            if k in OPTIONS:
                opts[k] = v
            else:
                overrides.append(a)
    return opts, flags, overrides


def load_runner(spec: str):
    if ":" not in spec:
        raise UsageError(f"runner={spec!r}: expected module:Class")
    mod, cls = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), cls)()
    except (ImportError, AttributeError) as e:
        raise UsageError(f"runner={spec}: cannot load it ({e})") from e


def usage(config_dir=None) -> str:
    """The help text, its lists of names read from the tables, the config folders and the launchers."""
    from benchmark.config import config_root, list_profiles
    from benchmark.run_table import LAUNCHERS
    from trainers.config import group_choices

    clusters = sorted(p.stem for p in (config_root(config_dir) / "slurm").glob("*.yaml"))
    groups = "  ".join(f"{g}={'|'.join(o)}" for g, o in group_choices().items())
    return __doc__.format(
        tables="|".join(list_tables()),
        profiles="|".join(list_profiles(config_dir)),
        launchers="|".join(LAUNCHERS),
        clusters="|".join(clusters),
        groups=groups,
    )


def print_configs(tables, resolver) -> None:
    """`--cfg job`: the resolved config of each row (what its stages are built from), as YAML."""
    from omegaconf import OmegaConf

    from benchmark.stages import expand

    if not tables:
        print(OmegaConf.to_yaml(resolver.base), end="")
    for spec in tables:
        for plan in expand(spec, resolver).rows:
            print(f"# table {spec.name}, row {plan.row.name}\n{OmegaConf.to_yaml(plan.cfg)}", end="")


def _list(config_dir) -> str:
    from benchmark.config import list_profiles

    lines = []
    for t in list_tables():
        spec = load_table(t)
        lines.append(f"table {t}: {spec.title}\n  rows: {', '.join(r.name for r in spec.rows)}")
    lines.append(f"profiles: {', '.join(list_profiles(config_dir))}")
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    """Errors follow data/cli.py: a user error (bad flag, key, table, missing input, unwritable output
    folder) is one line and exit 2; any other exception from a stage keeps its traceback (exit 1);
    Ctrl-C is one line and exit 130."""
    argv = sys.argv[1:] if argv is None else argv
    from trainers.config import print_config_flag

    argv, show_cfg = print_config_flag(argv)
    opts, flags, overrides = parse_args(argv)
    try:
        if flags & {"-h", "--help"}:
            print(usage(opts["config_dir"]))
            return 0
        if "--list" in flags:
            print(_list(opts["config_dir"]))
            return 0
        if show_cfg and not opts["table"]:
            from benchmark.config import HydraResolver

            print_configs([], HydraResolver(opts["profile"], overrides, config_dir=opts["config_dir"]))
            return 0
        if not opts["table"]:
            raise UsageError(f"say which table: table=<name>; valid tables: {', '.join(list_tables())}")
        tables = [load_table(t) for t in opts["table"].split(",")]  # unknown names fail here
        rows = opts["rows"].split(",") if opts["rows"] else None
        if rows:
            for t in tables:
                t.select(rows)
        from benchmark.config import HydraResolver
        from benchmark.run_table import LAUNCHERS, run_table

        if opts["launcher"] not in LAUNCHERS:
            raise UsageError(f"launcher={opts['launcher']} is unknown; valid: {', '.join(LAUNCHERS)}")
        cluster_overrides = [o for o in overrides if o.startswith(CLUSTER_PREFIX)]
        overrides = [o for o in overrides if not o.startswith(CLUSTER_PREFIX)]
        cluster = None
        if opts["launcher"] != "local":
            from slurm.config import load_cluster

            cluster = load_cluster(opts["cluster"], cluster_overrides, config_dir=opts["config_dir"])
        elif cluster_overrides or "--no-wait" in flags:
            raise UsageError(f"{' '.join(cluster_overrides + sorted(flags & {'--no-wait'}))}: only with launcher=slurm")
        resolver = HydraResolver(opts["profile"], overrides, config_dir=opts["config_dir"])
        if show_cfg:
            print_configs(tables, resolver)
            return 0
        runner = None if "--dry-run" in flags else load_runner(opts["runner"])
        for spec in tables:
            run_table(
                spec,
                resolver,
                runner,
                opts["launcher"],
                store=opts["store"],
                results=opts["results"],
                rows=rows,
                dry_run="--dry-run" in flags,
                cluster=cluster,
                wait="--no-wait" not in flags,
            )
    except StagesFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except NotImplementedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
