"""Job records beside each piece of work (`<folder>/slurm.json`) and the state of recorded jobs.

`slurm.json` lists every submission of the work: job id, array and task, executor, log files,
the jobs it waited for, when. It is written by the submitting process only (atomically), so a job
never races with it. The live state of a job comes from `squeue` (queued / running, with SLURM's
reason) and, once it left the queue, from `sacct` (COMPLETED, FAILED, TIMEOUT, CANCELLED, ...).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from data.atomic import atomic_write_text
from data.cli import UserError

RECORD = "slurm.json"
# squeue states of a job that still holds or waits for resources (anything else has left the queue)
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}


# ------------------------------------------------------------------------------------ slurm.json
def read_record(folder: str | Path) -> dict:
    path = Path(folder) / RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to forget the stage's past jobs") from e


def add_submission(folder: str | Path, submission: dict) -> dict:
    """Append one submission to `<folder>/slurm.json` (temp file + os.replace)."""
    record = read_record(folder)
    record.setdefault("submissions", []).append({"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **submission})
    atomic_write_text(Path(folder) / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def last_submission(folder: str | Path) -> dict | None:
    subs = read_record(folder).get("submissions") or []
    return subs[-1] if subs else None


# ------------------------------------------------------------------------------------ job states
@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # SLURM's state (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...) or UNKNOWN
    live: bool  # still in the queue (pending, held, running, requeued)
    reason: str = ""  # squeue's reason while pending (Dependency, Resources, JobHeldUser, ...)
    exit_code: str = ""  # sacct's ExitCode once finished

    @property
    def running(self) -> bool:
        return self.live and self.state in RUNNING_STATES


class QueueUnavailable(UserError, RuntimeError):
    """squeue could not be asked (controller down, no SLURM here)."""


def slurm_available() -> str | None:
    """None when `squeue` answers, else why not (for skip messages and errors)."""
    if shutil.which("squeue") is None:
        return "squeue not found: SLURM's client commands are not installed here"
    try:
        r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "squeue did not answer within 20 s"
    if r.returncode != 0:
        return f"squeue failed: {(r.stderr or r.stdout).strip()}"
    return None


def query_jobs(job_ids: Iterable[str]) -> dict[str, JobState]:
    """The state of each SLURM job id ("123", or "123_4" for an array task).

    Raises QueueUnavailable when squeue cannot be asked: then nothing may be called dead.
    A job neither in the queue nor in the accounting (no slurmdbd, or purged) is "ENDED".
    """
    ids = [j for j in dict.fromkeys(job_ids) if j and not j.startswith("DEBUG")]
    if not ids:
        return {}
    states = _squeue(ids)
    gone = [j for j in ids if j not in states]
    if gone:
        states.update(_sacct(gone))
    for j in ids:
        states.setdefault(j, JobState(j, "ENDED", False))
    return states


def _squeue(ids: list[str]) -> dict[str, JobState]:
    if shutil.which("squeue") is None:
        raise QueueUnavailable("squeue not found")
    cmd = ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        raise QueueUnavailable("squeue did not answer within 60 s") from e
    if r.returncode != 0:
        raise QueueUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    wanted, out = set(ids), {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            out[parts[0]] = JobState(parts[0], parts[1], True, reason=parts[2])
    return out


def _sacct(ids: list[str]) -> dict[str, JobState]:
    if shutil.which("sacct") is None:
        return {}
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(ids)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {}
    if r.returncode != 0:
        return {}  # accounting disabled: the caller sees ENDED
    out = {}
    for line in r.stdout.splitlines():  # a requeued job has several lines: the last is the latest run
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
            if state in RUNNING_STATES | {"PENDING", "REQUEUED", "SUSPENDED"}:
                state = "ENDED"  # gone from the queue; the accounting has not caught up yet
            out[parts[0]] = JobState(parts[0], state, False, exit_code=parts[2])
    return out


def tail(path: str | Path | None, lines: int = 15) -> str:
    """The last lines of a log file ('' when absent), for failure messages."""
    if not path or not Path(path).is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
