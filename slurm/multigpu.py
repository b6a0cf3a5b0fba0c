"""Several GPUs inside one job: `accelerate launch` with one process per GPU (one SLURM task).

The job's own process (the submitit task) stays the parent: it pickles the call (function and
arguments) into the work folder, runs

    <python> -m accelerate.commands.launch --num_processes N --num_machines 1 --machine_rank 0
        --main_process_port P --dynamo_backend no --multi_gpu [extra args] -m slurm.multigpu <payload>

and each of the N processes unpickles the call and makes it (the trainer is an accelerate loop:
every rank trains, the main one writes checkpoints and the export). Rank 0 pickles its return value
beside the payload; the parent returns it. Only the parent touches the store, so a stage is begun
and committed once whatever N is.

A preemption signal reaches the parent (submitit requeues the job); `subprocess.run` then kills the
launcher and its processes; the requeued job resumes from the trainer's newest checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_bytes
from data.cli import command

PAYLOAD = ".multigpu_call.pkl"
RESULT = ".multigpu_result.pkl"


def main_process_port(setting: Any = "auto", job_id: str | None = None) -> int:
    """`auto`: 20000 + the SLURM job id mod 20000, so two jobs sharing a node do not share a port."""
    if setting not in (None, "auto"):
        return int(setting)
    job_id = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID", "0")
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def accelerate_command(
    num_processes: int,
    payload: str | Path,
    *,
    port: int,
    python: str | None = None,
    cpus: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The `accelerate launch` command line that runs the pickled call `payload` in N processes.

    `cpus`: the CPUs of the job (SLURM_CPUS_PER_TASK), shared by the processes for their threads.
    """
    n = int(num_processes)
    if n < 1:
        raise ValueError(f"num_processes={num_processes}: at least one process")
    cpus = cpus if cpus is not None else int(os.environ.get("SLURM_CPUS_PER_TASK", os.cpu_count() or 1))
    cmd = [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--machine_rank",
        "0",
        "--main_process_port",
        str(int(port)),
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(max(1, int(cpus) // n)),
    ]
    if n > 1:
        cmd.append("--multi_gpu")
    cmd += [str(a) for a in extra_args]
    return cmd + ["-m", "slurm.multigpu", str(payload)]


def run_in_processes(
    fn: Callable,
    args: Sequence,
    num_processes: int,
    work_dir: str | Path,
    *,
    port: int | None = None,
    python: str | None = None,
    extra_args: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> Any:
    """fn(*args) in `num_processes` processes under accelerate launch; rank 0's return value."""
    import cloudpickle

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    payload, result = work_dir / PAYLOAD, work_dir / RESULT
    result.unlink(missing_ok=True)  # a result left by an earlier attempt must not count
    atomic_write_bytes(payload, cloudpickle.dumps((fn, tuple(args))))
    cmd = accelerate_command(
        num_processes,
        payload,
        port=port if port is not None else main_process_port(),
        python=python,
        extra_args=extra_args,
    )
    echo("running " + " ".join(cmd))
    rc = subprocess.run(cmd).returncode
    if not result.is_file():
        raise RuntimeError(
            f"accelerate launch exited with code {rc} and rank 0 returned nothing "
            f"({result} absent); the job's log has each rank's error"
        )
    if rc != 0:
        echo(f"warning: accelerate launch exited with code {rc} after rank 0 finished; keeping rank 0's result")
    with open(result, "rb") as f:
        out = cloudpickle.load(f)
    result.unlink(missing_ok=True)
    payload.unlink(missing_ok=True)
    return out


@command
def main(argv: Sequence[str] | None = None) -> int:
    """One rank: make the pickled call; rank 0 saves the return value beside the payload."""
    import cloudpickle

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m slurm.multigpu <payload.pkl>  (started by accelerate launch)", file=sys.stderr)
        return 2
    from data.cli import setup_logging

    setup_logging()  # a worker process: its progress logged like the command's
    payload = Path(argv[0])
    with open(payload, "rb") as f:
        fn, args = cloudpickle.load(f)
    out = fn(*args)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_bytes(payload.parent / RESULT, cloudpickle.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
