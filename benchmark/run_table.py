"""Run one table: expand it into stages, run the pending ones (here or on a cluster), render it.

`run_table("III", resolver, runner)` is the whole job of `python -m benchmark.run table=III`
(benchmark/run.py, the command line). The flow: the table spec (ablations/table_III.yaml) ->
the stage graph (benchmark/stages.py) -> the pending stages run by the StageRunner
(benchmark/stage_runner.py) here, one after the other (benchmark/local.py), or as SLURM job arrays
(benchmark/cluster.py), split into shards where benchmark.shards > 1 (benchmark/shards.py) -> the
store (benchmark/store.py) -> the table and figures (benchmark/render.py). Finished stages
(runs/<hash>/DONE) are never recomputed, so rerunning an interrupted command resumes it.

Launchers: `local` runs the pending stages here; `slurm` submits them as job arrays and by default
waits and renders; `debug` is the same submission path with submitit's in-process DebugExecutor.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ablations.registry import TableSpec, load_table
from benchmark import lock, provenance, rehearsal
from benchmark.cluster import format_arrays, launch_table
from benchmark.config import ConfigError
from benchmark.local import check_finished, execute_stage
from benchmark.preflight import refuse, run_preflight
from benchmark.render import render
from benchmark.shards import check_can_shard, stage_shards
from benchmark.stage_meter import StageMeter
from benchmark.stage_runner import StageRunner
from benchmark.stages import DictResolver, StageGraph, expand, select
from benchmark.store import Store
from data.atomic import make_temp_file
from data.cli import UserError

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm", "debug")


@dataclass
class TableRun:
    graph: StageGraph
    executed: list[str] = field(default_factory=list)  # hashes run by this call
    outputs: dict[str, Path] = field(default_factory=dict)  # md / tex / json / figures
    results_dir: Path | None = None
    launch: object | None = None  # slurm.launch.LaunchResult (launcher slurm / debug)
    stage_perf: list[dict] = field(default_factory=list)  # launcher local: wall time, peak memory per stage run


class StagesFailed(RuntimeError):
    """Stages that ended without a result on the cluster (each named with its job and log)."""


def run_table(
    table: str | TableSpec,
    cfg,
    runner: StageRunner,
    launcher: str = "local",
    *,
    store: str | Path | Store = "runs",
    results: str | Path = "results",
    rows: Sequence[str] | None = None,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = None,
    figures: bool = True,
    cluster: dict | None = None,
    wait: bool = True,
    meter: StageMeter | None = None,
) -> TableRun:
    """Run one table. `cfg` is a resolver (benchmark.config.HydraResolver) or a resolved base dict.

    launcher slurm / debug: `cluster` is the cluster config (slurm.config.load_cluster; default:
    configs/slurm/default.yaml); `wait=False` submits and returns, and a render job draws the table
    once every job ended. `meter` (benchmark/stage_meter.py) collects the wall time and peak memory
    of each stage run here (launcher local), also when a stage fails.

    `echo` takes every line (tests collect them); by default progress and status are logged and the
    --dry-run graph, the command's own output, is printed.
    """
    show = echo or print
    echo = echo or log.info
    meter = meter or StageMeter(echo)  # launcher local: each stage's wall time and peak memory
    spec = table if isinstance(table, TableSpec) else load_table(table)
    spec = spec.select(rows)
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher={launcher!r} is unknown; valid: {', '.join(LAUNCHERS)}")
    resolver = cfg if hasattr(cfg, "resolve") else DictResolver(cfg)
    store = store if isinstance(store, Store) else Store(store)
    if rehearsal.enabled(resolver.base):  # profile=rehearsal: its stand-in networks, written once
        try:
            if dry_run:
                for line in rehearsal.describe(resolver.base):
                    show(line)
            else:  # before the stage graph (hashed by the inputs' content) and the preflight (which opens them)
                rehearsal.ensure(resolver.base, echo)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    graph = expand(spec, resolver)
    check_values(graph)  # types and ranges of every row's config, before anything runs

    inputs = run_preflight((p.row.name, p.cfg, spec.detectors_for(p.row)) for p in graph.rows if p.cfg is not None)
    stand_ins_pending = dry_run and rehearsal.enabled(resolver.base)
    if stand_ins_pending:
        rehearsal.drop_pending(resolver.base, inputs)  # listed above as pending: written when the run starts
    elif not inputs.problems:  # an input whose content is unknown would store its stages under a provisional hash
        content_problems(graph, inputs)
    sharded = [s for s in graph.order() if stage_shards(s) > 1]  # checks benchmark.shards of every stage
    if runner is not None and not dry_run:
        for s in sharded:
            check_can_shard(runner, s, stage_shards(s))
    from benchmark.foundation import describe, ensure

    foundation = getattr(resolver, "foundation", {})
    mode = provenance.check_mode(select(resolver.base, "benchmark.provenance", "record"))
    check_store(store.root, write=False)  # a file where the store should be: also --dry-run
    lock_warning = lock.warning()  # installed packages other than the lock's: numbers may differ
    if dry_run:
        if lock_warning:
            show(f"warning: {lock_warning}")
        for line in describe(foundation):
            show(line)
        show(graph.format(store.is_done, store.root, notes=provenance.flag_stages(graph, store)))
        if launcher != "local":
            show(format_arrays(graph, store))
        from benchmark.cost import cost_lines

        for line in cost_lines(graph, store.is_done, cluster):  # GPU-hours, checkpoints, time limits
            show(line)
        refuse(spec.name, inputs, show)  # every wrong input on stdout, then exit 2
        return TableRun(graph)
    refuse(spec.name, inputs)  # benchmark/preflight.py: nothing starts while an input is wrong

    check_store(store.root)  # writable (made if need be), before the results folder is made
    run = TableRun(graph)
    check_finished(graph, store, echo)  # a damaged finished stage is set aside and recomputed
    if lock_warning:
        echo(f"warning: {lock_warning}")
    provenance.apply(graph, store, mode, echo)  # made by other code: flagged (strict: recomputed)
    pending = graph.pending(store.is_done)
    echo(
        f"table {spec.name}: {len(graph.stages)} stages, {len(graph.stages) - len(pending)} cached, "
        f"{len(pending)} to run (store {store.root}/)"
    )
    fake = bool(getattr(runner, "is_fake", False))
    out_dir = Path(results) / (graph.profile + ("-fake" if fake else ""))
    run.results_dir = out_dir
    if pending:
        check_writable(out_dir, "results")  # before the first stage, not after the last
        ensure(foundation, echo)  # the parts the stages load, built once (resumable)
    if launcher == "local":
        bar = tqdm(pending, desc=f"table {spec.name}", unit="stage", file=sys.stderr)
        run.stage_perf = meter.records
        for stage in bar:
            bar.set_postfix_str(f"{stage.kind} {stage.hash}")
            with meter.stage(stage):
                execute_stage(stage, graph, store, runner, echo)
            run.executed.append(stage.hash)
        bar.close()
    elif pending:
        wait = wait or launcher == "debug"  # the debug executor runs everything here anyway
        run.launch = launch_table(graph, store, runner, launcher, cluster, wait, echo, out_dir, fake, figures)
        run.executed = [h for h in run.launch.submitted if store.is_done(h)]
        if not wait:
            return run

    run.outputs = render(graph, store, out_dir, fake=fake, figures=figures)
    if foundation and not fake and figures:
        # a profile with trained models (profile=mini): do the metrics separate real, generated and noise?
        from benchmark.sanity import write_table_report

        run.outputs.update(write_table_report(graph, store, foundation, out_dir, echo))
    for k, p in run.outputs.items():
        echo(f"wrote {k}: {p}")
    failed = run.launch.failed if run.launch is not None else []
    if failed:
        raise StagesFailed(
            f"table {spec.name}: {len(failed)} stage(s) ended without a result (the table above "
            f"shows n/a for them; the next benchmark.run submits them again):\n  "
            + "\n  ".join(
                f"{graph.stages[o.key].kind} {o.key}: job {o.job_id} {o.state}"
                f"{' (' + o.detail + ')' if o.detail else ''}; log {o.log}"
                for o in failed
            )
        )
    return run


def content_problems(graph: StageGraph, inputs) -> None:
    """Add to the preflight's report every input whose content benchmark/identity.py could not tell
    (its stages would be stored under a hash that names a location, not the content)."""
    from benchmark.preflight import Problem

    rows = sorted({p.label for p in graph.rows})
    for line in graph.unknown_content:
        item, _, why = line.partition(": content unknown (")
        key, _, value = item.partition("=")
        found = why[:-1] if why.endswith(")") else why
        problem = Problem(key, value, "content the stage hash can name (docs/benchmark.md, 'Inputs by content')", found)
        inputs.problems.setdefault(problem, []).extend(rows)


def write_error(folder: Path) -> OSError | None:
    """Why no file can be created in `folder` (made if need be); None when one can."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        make_temp_file(Path(folder) / ".write-check").unlink()
    except OSError as e:
        return e
    return None


def check_writable(folder: Path, option: str) -> None:
    """`folder` exists (made if need be) and a file can be created in it; else a user error naming it."""
    if e := write_error(folder):
        raise UserError(
            f"{option}={Path(folder).parent}: the output folder {folder} is not writable "
            f"({e.strerror or e}); nothing was started"
        ) from e


def check_store(root: Path, write: bool = True) -> None:
    """The store can hold stages: `root` is a folder or can be made one, and (`write`) a file can be
    created in it; else a user error naming it (a file, a read-only disk, no permission)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"store={root}: a file, not a folder; give a folder for the stages; nothing was started")
    if write and (e := write_error(root)):
        raise UserError(
            f"store={root}: the stage store cannot be written ({e.strerror or e}); nothing was started"
        ) from e


def check_values(graph: StageGraph) -> None:
    """Every row's resolved config against trainers/config_schema.py: one ConfigError naming each bad
    key, its value, what is allowed and the rows that have it."""
    from trainers.config_schema import problems

    found: dict[str, list[str]] = {}
    for p in graph.rows:
        if p.cfg is not None:
            for line in problems(p.cfg):
                found.setdefault(line, []).append(p.row.name)
    if found:
        raise ConfigError(
            "\n".join(f"table {graph.table.name}: {line}  [rows: {', '.join(rows)}]" for line, rows in found.items())
        )
