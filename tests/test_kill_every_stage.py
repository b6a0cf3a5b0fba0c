"""Kill -9 at every stage kind, rerun, same bytes: one row of Table III on the smoke profile (tiny real
models, the real stage runner) is killed with SIGKILL during the test set, training, generation,
evaluation and the rendering of the table, rerun after each kill, and must end with the table JSON,
the trained weights, the generated frames and the detections bit-identical to an uninterrupted run.

Slow (about 10 minutes on a 2-core CPU shared with other jobs; user time about 1.5 minutes per
run): the smallest settings the smoke profile allows (frames 32x48, 4 frames per clip, 2 training
and 2 test clips, detection metrics only), and the uninterrupted run alongside the killed ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "table=III",
    "rows=hybrid",
    "data.height=32",
    "data.width=48",
    "data.clip_len=4",
    "data.train.num_clips=2",
    "metrics.metrics=[det]",
    "train.checkpoint_every=1",
]
# what must be the same bytes in each stage folder (records with times, logs and checkpoints aside)
COMPARED = ("unet", "frames", "first_frames", "boxes", "detections")
TIMEOUT = 900


def _cmd(tmp: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmark.run",
        *SMALL,
        f"store={tmp / name / 'runs'}",
        f"results={tmp / name / 'results'}",
    ]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def _stages(store: Path) -> list[tuple[str, Path]]:
    """(kind, folder) of every stage folder begun so far."""
    out = []
    for info in store.glob("*/stage.json"):
        try:
            out.append((json.loads(info.read_text())["kind"], info.parent))
        except (OSError, ValueError, KeyError):
            pass  # being replaced right now: the next poll sees it
    return out


def _running(store: Path, kind: str, ready) -> bool:
    """A stage of `kind` has begun, is not done, and `ready(folder)` says it is under way."""
    return any(k == kind and not (d / "DONE").exists() and ready(d) for k, d in _stages(store))


# When to kill, per stage kind: inside the stage, past its start where the stage has several steps.
KILL_AT = {
    "testset": lambda s: _running(s, "testset", lambda d: True),
    "train": lambda s: _running(s, "train", lambda d: any((d / "checkpoints").glob("step-*"))),
    "generate": lambda s: _running(s, "generate", lambda d: any(p for p in (d / "frames").glob("clip_*"))),
    "evaluate": lambda s: _running(s, "evaluate", lambda d: True),
    "render": lambda s: any(k == "evaluate" and (d / "DONE").exists() for k, d in _stages(s)),
}


def _kill_when(cmd: list[str], store: Path, kind: str, log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + TIMEOUT
    try:
        while proc.poll() is None and time.time() < deadline and not KILL_AT[kind](store):
            time.sleep(0.01 if kind == "testset" else 0.05)  # the test set stage lasts about a second
        assert proc.poll() is None, (
            f"the run ended before a kill during {kind} (rc {proc.returncode}):\n"
            + log.read_text(errors="replace")[-3000:]
        )
        assert time.time() < deadline, f"no {kind} stage under way after {TIMEOUT} s; see {log}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(root: Path) -> dict[str, str]:
    """sha256 of every compared file of every stage, and of the table JSON and the metrics (no timings)."""
    out = {}
    for stage in sorted((root / "runs").iterdir()):
        if stage.name.startswith("."):
            continue
        for sub in COMPARED:
            for f in sorted((stage / sub).rglob("*")):
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(stage).parts):
                    out[f"{stage.name}/{f.relative_to(stage)}"] = _digest(f)
        metrics = stage / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            m.pop("timing", None)
            out[f"{stage.name}/metrics.json"] = json.dumps(m, sort_keys=True)
    out["table_III.json"] = _digest(root / "results" / "smoke" / "table_III.json")
    return out


@pytest.mark.slow
def test_kill_at_every_stage_kind_then_rerun_is_bit_identical(tmp_path):
    # the uninterrupted run, on its own store, alongside the killed ones (the wall time of the test halves)
    whole_log = tmp_path / "whole.log"
    with open(whole_log, "wb") as out:
        whole = subprocess.Popen(_cmd(tmp_path, "whole"), cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        log = tmp_path / "killed.log"
        for kind in ("testset", "train", "generate", "evaluate", "render"):
            _kill_when(_cmd(tmp_path, "killed"), tmp_path / "killed" / "runs", kind, log)
        last = subprocess.run(
            _cmd(tmp_path, "killed"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
        assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
        assert "is damaged" not in last.stdout, last.stdout  # killed stages were never DONE, so never trusted
        assert whole.wait(timeout=TIMEOUT) == 0, whole_log.read_text(errors="replace")[-3000:]
    finally:
        if whole.poll() is None:
            whole.kill()
            whole.wait()

    killed, expected = _outputs(tmp_path / "killed"), _outputs(tmp_path / "whole")
    kinds = {k for k, _ in _stages(tmp_path / "killed" / "runs")}
    assert kinds == {"testset", "train", "generate", "evaluate"}
    assert any("/unet/" in k for k in expected) and any("/detections/" in k for k in expected)
    assert sorted(killed) == sorted(expected)
    assert [k for k in expected if killed[k] != expected[k]] == []
