"""Submitting work as submitit job arrays with exact dependencies, recording it, waiting for it.

`launch(works, ...)` is generic: a `Work` is a picklable call plus its kind (which picks the
resources in configs/slurm and the array it joins), the keys of the work it needs, and the folder
where its `slurm.json` record goes. benchmark/cluster.py turns a table's pending stages into works.

Dependencies (see slurm/plan.py for the grouping):
  - an array is submitted with `--dependency=afterok:<every job any of its tasks needs>` and
    `--kill-on-invalid-dep=yes` (a task whose input failed is cancelled, not left pending forever);
  - then each task is narrowed to exactly the jobs it needs (`scontrol update JobId=<A>_<i>
    Dependency=afterok:...`), so one failed row does not hold up or cancel the other rows. Until that
    update (or if a site refuses it) the array-wide dependency is the safe superset.
Work already queued or running (recorded in slurm.json, still in squeue) is waited for, never
submitted twice; work whose job ended without a result is submitted again.

Executors: `slurm` (submitit AutoExecutor on the cluster: everything is submitted at once and SLURM
orders it) and `debug` (submitit's DebugExecutor: each job runs in this process when waited for, so
arrays go one after the other, in dependency order; for tests and debugging).
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from tqdm.auto import tqdm

from data.cli import UserError
from slurm.config import executor_parameters, kind_settings
from slurm.plan import ArrayPlan, Item, dependency_string, plan_arrays
from slurm.records import QueueUnavailable, add_submission, last_submission, query_jobs, tail

EXECUTORS = ("slurm", "debug")
# squeue reasons of a pending job that just has to wait its turn; any other reason is shown once,
# since it often means the job can never start (PartitionConfig, InvalidQOS, ReqNodeNotAvail, ...)
ORDINARY_REASONS = {
    "None",
    "Dependency",
    "Priority",
    "Resources",
    "BeginTime",
    "JobArrayTaskLimit",
    "Prolog",
    "NodeDown",
    "ReqNodeNotAvail",
}


class SubmissionError(UserError, RuntimeError):
    """sbatch refused an array; what was submitted before it stays queued (and is waited for next time)."""


@dataclass
class Work:
    key: str  # unique (a stage hash)
    kind: str  # resources: configs/slurm kinds.<kind>; one array per kind (and level)
    call: Callable  # run in the job as call(*args); must pickle (cloudpickle)
    args: tuple = ()
    deps: tuple[str, ...] = ()  # keys of the work this needs
    folder: Path | None = None  # where its slurm.json record goes
    label: str = ""  # for messages


@dataclass
class Outcome:
    key: str
    status: str  # done | failed | queued (submitted or already queued, not waited for)
    job_id: str | None = None
    state: str = ""  # SLURM's last state
    log: str | None = None  # stderr of the job
    detail: str = ""


@dataclass
class LaunchResult:
    arrays: list[ArrayPlan] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)  # key -> job id (submitted now or adopted)
    submitted: list[str] = field(default_factory=list)  # keys submitted by this call
    adopted: list[str] = field(default_factory=list)  # keys already queued / running
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    after_job: str | None = None  # the job run after everything (no-wait)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]


class Requeueable(submitit.helpers.Checkpointable):
    """What every job runs. Checkpointable: on the timeout / preemption signal submitit calls
    `checkpoint(*args)`, which (by default) resubmits this same call, and requeues the job; the call
    resumes from what its first run left on disk (the trainer from its newest checkpoint)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def make_executor(executor: str, folder: str | Path, cluster: dict) -> submitit.AutoExecutor:
    if executor == "slurm":
        return submitit.AutoExecutor(
            folder=folder,
            cluster="slurm",
            slurm_python=cluster.get("python") or sys.executable,
            slurm_max_num_timeout=int(cluster.get("max_num_timeout", 3)),
        )
    if executor == "debug":
        return submitit.AutoExecutor(folder=folder, cluster="debug")
    raise ValueError(f"executor {executor!r} is unknown; valid: {', '.join(EXECUTORS)}")


def launch(
    works: Sequence[Work],
    *,
    is_done: Callable[[str], bool],
    cluster: dict,
    executor: str = "slurm",
    folder: str | Path,
    chdir: str | Path,
    pythonpath: str | Path,
    wait: bool = True,
    kind_order: Sequence[str] = (),
    after: Work | None = None,
    prepare: Callable[[str], Any] | None = None,
    echo: Callable[[str], None] = print,
) -> LaunchResult:
    """Submit what is neither done nor queued, then (wait=True) wait until all of it ended.

    `prepare(key)` runs just before a work is submitted (e.g. writing what its job will read);
    `after` (wait=False only): one more job that runs once every job of this launch ended, whatever
    their outcome (afterany), e.g. rendering the table.
    """
    works_by_key = {w.key: w for w in works}
    res = LaunchResult()
    running = _adopt(works_by_key, is_done, executor) if executor == "slurm" else {}
    res.adopted, res.job_ids = list(running), dict(running)
    for key, job in running.items():
        echo(f"{works_by_key[key].label or key}: already queued or running as job {job}; waiting for it")
    items = [Item(w.key, w.kind, tuple(w.deps)) for w in works]
    res.arrays = plan_arrays(items, is_done, running, kind_order)
    base = Path(folder)
    prepare = prepare or (lambda key: None)
    if executor == "debug":
        _run_in_process(res, works_by_key, base, cluster, chdir, pythonpath, prepare, echo)
        return res
    for plan in res.arrays:
        for k in plan.keys:
            prepare(k)
        try:
            _submit_array(plan, works_by_key, res.job_ids, base, cluster, executor, chdir, pythonpath, echo)
        except (
            OSError,
            subprocess.SubprocessError,
            submitit.core.utils.FailedJobError,
            submitit.core.utils.FailedSubmissionError,
        ) as e:
            queued = sorted({j.split("_")[0] for j in res.job_ids.values()})
            raise SubmissionError(
                f"sbatch refused the {plan.name} array ({len(plan.keys)} stage(s)) with the cluster settings of "
                f"kinds.{plan.kind} in configs/slurm/{cluster.get('name', '?')}.yaml: {str(e).strip()[-800:]}\n"
                + (
                    f"Jobs submitted before it stay queued ({', '.join(queued)}): the next benchmark.run waits for "
                    f"them instead of submitting them again; `scancel {' '.join(queued)}` drops them."
                    if queued
                    else "Nothing was submitted."
                )
            ) from e
        res.submitted += plan.keys
    if not wait:
        for key in res.job_ids:
            res.outcomes[key] = Outcome(key, "queued", res.job_ids[key])
        if after is not None and res.job_ids:
            res.after_job = _submit_after(
                after, list(res.job_ids.values()), base, cluster, executor, chdir, pythonpath, echo
            )
        return res
    _wait(res, works_by_key, is_done, float(cluster.get("poll_s", 30)), echo)
    return res


# ------------------------------------------------------------------------------------ submission
def _adopt(works: dict[str, Work], is_done, executor: str) -> dict[str, str]:
    """key -> job id of the not-done work whose last recorded job is still in the queue."""
    last = {}
    for key, w in works.items():
        if w.folder is None or is_done(key):
            continue
        sub = last_submission(w.folder)
        if sub and sub.get("executor") == executor and sub.get("job_id"):
            last[key] = sub["job_id"]
    if not last:
        return {}
    states = query_jobs(last.values())
    return {key: job for key, job in last.items() if states[job].live}


def _executor_for(
    plan_kind: str, name: str, base: Path, cluster: dict, executor: str, chdir, pythonpath, dependency: str | None
):
    ex = make_executor(executor, base / "%j", cluster)
    params = executor_parameters(
        kind_settings(cluster, plan_kind),
        name=name,
        array_parallelism=int(cluster.get("array_parallelism", 32)),
        chdir=chdir,
        pythonpath=pythonpath,
        kill_on_invalid_dep=bool(cluster.get("kill_on_invalid_dep", True)),
    )
    if dependency:
        params["slurm_additional_parameters"] = {**params["slurm_additional_parameters"], "dependency": dependency}
    ex.update_parameters(**params)
    return ex


def _submit_array(
    plan: ArrayPlan,
    works: dict[str, Work],
    job_ids: dict[str, str],
    base: Path,
    cluster: dict,
    executor: str,
    chdir,
    pythonpath,
    echo,
) -> None:
    union = dependency_string(job_ids[k] for k in plan.union())
    ex = _executor_for(plan.kind, f"lsa-{plan.name}", base, cluster, executor, chdir, pythonpath, union)
    with ex.batch():
        submitted = [ex.submit(Requeueable(works[k].call), *works[k].args) for k in plan.keys]
    for k, job in zip(plan.keys, submitted):
        job_ids[k] = job.job_id
        waits = [job_ids[d] for d in plan.needs[k]]
        if works[k].folder is not None:
            add_submission(
                works[k].folder,
                {
                    "job_id": job.job_id,
                    "array": plan.name,
                    "executor": executor,
                    "kind": plan.kind,
                    "stdout": str(job.paths.stdout),
                    "stderr": str(job.paths.stderr),
                    "depends_on": waits,
                    "cluster": cluster.get("name"),
                },
            )
    first = submitted[0].job_id.split("_")[0]
    echo(f"submitted {plan.name}: {len(plan.keys)} task(s) as job {first}" + (f" after {union}" if union else ""))
    if cluster.get("per_task_dependencies", True) and len(plan.keys) > 1:
        _narrow(plan, job_ids, union, echo)


def _narrow(plan: ArrayPlan, job_ids: dict[str, str], union: str | None, echo) -> None:
    """Each task waits for exactly its own inputs instead of the whole array's."""
    for k in plan.keys:
        own = dependency_string(job_ids[d] for d in plan.needs[k])
        if own == union:
            continue
        cmd = ["scontrol", "update", f"JobId={job_ids[k]}", f"Dependency={own or ''}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            echo(
                f"warning: {' '.join(cmd)} failed ({r.stderr.strip()}); task {job_ids[k]} keeps the "
                f"array's dependency {union}"
            )


def _submit_after(
    work: Work, job_ids: list[str], base: Path, cluster: dict, executor: str, chdir, pythonpath, echo
) -> str:
    dep = dependency_string(job_ids, "afterany")
    ex = _executor_for(work.kind, f"lsa-{work.kind}", base, cluster, executor, chdir, pythonpath, dep)
    job = ex.submit(Requeueable(work.call), *work.args)
    echo(
        f"submitted {work.label or work.kind} as job {job.job_id}, after every job above (afterany); "
        f"log {job.paths.stdout}"
    )
    return job.job_id


# ------------------------------------------------------------------------------------ waiting
def _wait(res: LaunchResult, works: dict[str, Work], is_done, poll_s: float, echo) -> None:
    waiting = dict(res.job_ids)  # key -> job id
    bar = tqdm(total=len(waiting), desc="slurm", unit="stage", file=sys.stderr)
    plain_echo = echo

    def echo(msg: str) -> None:  # lines above the progress bar, not through it
        with tqdm.external_write_mode(file=sys.stderr):
            plain_echo(msg)

    warned, reasons_seen = False, set()
    try:
        while waiting:
            for key in [k for k in waiting if is_done(k)]:
                res.outcomes[key] = Outcome(key, "done", waiting.pop(key))
                echo(f"done: {works[key].label or key} (job {res.outcomes[key].job_id})")
                bar.update(1)
            if not waiting:
                break
            try:
                states = query_jobs(waiting.values())
            except QueueUnavailable as e:
                if not warned:
                    echo(f"warning: cannot read the queue ({e}); still waiting")
                    warned = True
                time.sleep(poll_s)
                continue
            for key, job in list(waiting.items()):
                st = states[job]
                if st.live and st.reason and st.reason not in ORDINARY_REASONS and (job, st.reason) not in reasons_seen:
                    reasons_seen.add((job, st.reason))
                    echo(
                        f"note: job {job} ({works[key].label or key}) is {st.state} because {st.reason}: it may "
                        f"never start; check the cluster settings (partition, account, qos, cpus, mem, gpus)"
                    )
                if st.live or is_done(key):  # is_done again: it may have finished meanwhile
                    continue
                waiting.pop(key)
                res.outcomes[key] = _failure(key, job, st.state, works, res)
                o = res.outcomes[key]
                echo(
                    f"FAILED: {works[key].label or key} (job {job}, {o.state}{', ' + o.detail if o.detail else ''}); "
                    f"log {o.log}"
                )
                bar.update(1)
            bar.set_postfix_str(_summary(states, waiting))
            if waiting:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        echo(
            "interrupted: the jobs stay queued on the cluster. `python -m benchmark.status ...` shows them; "
            "running the same benchmark.run again waits for them (nothing is submitted twice); "
            f"scancel {' '.join(sorted({j.split('_')[0] for j in waiting.values()}))} stops them."
        )
        raise
    finally:
        bar.close()


def _summary(states, waiting) -> str:
    live = [states[j] for j in waiting.values() if j in states]
    return f"{sum(s.running for s in live)} running, {sum(not s.running for s in live)} queued"


def _failure(key: str, job: str, state: str, works: dict[str, Work], res: LaunchResult) -> Outcome:
    sub = last_submission(works[key].folder) if works[key].folder is not None else None
    log = (sub or {}).get("stderr")
    failed_inputs = [d for d in works[key].deps if d in res.outcomes and res.outcomes[d].status == "failed"]
    if failed_inputs:
        detail = "not run: its input " + ", ".join(works[d].label or d for d in failed_inputs) + " failed"
    elif state == "COMPLETED":
        detail = "the job ended without the stage's result"
    else:
        detail = ""
        last = tail(log, 3).strip().splitlines()
        if last:
            detail = last[-1][:300]
    return Outcome(key, "failed", job, state, log, detail)


# ------------------------------------------------------------------------------------ debug executor
def _run_in_process(
    res: LaunchResult, works: dict[str, Work], base: Path, cluster: dict, chdir, pythonpath, prepare, echo
):
    """submitit's DebugExecutor: each job runs here when asked for; arrays in dependency order."""
    for plan in res.arrays:
        ready = [
            k
            for k in plan.keys
            if not any(res.outcomes.get(d) and res.outcomes[d].status == "failed" for d in plan.needs[k])
        ]
        for k in set(plan.keys) - set(ready):
            res.outcomes[k] = _failure(k, "", "NOT_RUN", works, res)
        if not ready:
            continue
        for k in ready:
            prepare(k)
        ex = _executor_for(plan.kind, f"lsa-{plan.name}", base, cluster, "debug", chdir, pythonpath, None)
        with ex.batch():
            jobs = [ex.submit(Requeueable(works[k].call), *works[k].args) for k in ready]
        res.submitted += ready
        for k, job in zip(ready, jobs):
            res.job_ids[k] = job.job_id
            if works[k].folder is not None:
                add_submission(
                    works[k].folder,
                    {
                        "job_id": job.job_id,
                        "array": plan.name,
                        "executor": "debug",
                        "kind": plan.kind,
                        "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr),
                        "depends_on": [res.job_ids.get(d, d) for d in plan.needs[k]],
                    },
                )
        echo(f"running {plan.name}: {len(ready)} task(s) in this process (debug executor)")
        for k, job in zip(ready, jobs):
            error = job.exception()  # runs the job (DebugJob.result() would open pdb on an error)
            if error is None:
                res.outcomes[k] = Outcome(k, "done", job.job_id, "COMPLETED")
            else:  # the debug executor logs nothing by itself: keep the traceback where status looks
                job.paths.stderr.parent.mkdir(parents=True, exist_ok=True)
                job.paths.stderr.write_text("".join(traceback.format_exception(error)))
                res.outcomes[k] = Outcome(
                    k, "failed", job.job_id, "FAILED", str(job.paths.stderr), f"{type(error).__name__}: {error}"[:300]
                )
                echo(f"FAILED: {works[k].label or k}: {res.outcomes[k].detail}")
