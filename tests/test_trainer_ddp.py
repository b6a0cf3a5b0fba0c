"""Data-parallel training (DDP) with two processes on the CPU (gloo), launched by the command
docs/slurm.md gives for several GPUs: `accelerate launch --multi_gpu --num_processes 2 -m
trainers.train` (without GPUs accelerate runs it as MULTI_CPU). One log line per optimizer step, the
clips split between the processes, every process's state in the checkpoint, and a resumed
two-process run equal to an uninterrupted one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainers.loop import EpochSampler

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=4",
    "data.clip_len=4",
    "schedule=joint",
    "train.checkpoint_every=100",
    "train.epochs=2",
    "train.seed=7",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir, *overrides, nproc=2) -> str:
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "trainers.train",
        *COMMON,
        f"train.out_dir={out_dir}",
        *overrides,
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr  # the run folder on stdout, progress (logging) on stderr


def _log(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_runs(tiny_cache, tmp_path_factory):
    """3 steps in one go vs 2 steps + a fresh launch resuming for 1 more (into epoch 2)."""
    base = tmp_path_factory.mktemp("ddp")
    one, two = base / "one_go", base / "resumed"
    _launch(one, "train.max_steps=3")
    _launch(two, "train.max_steps=2")
    out = _launch(two, "train.max_steps=3")
    return one, two, out


def test_two_processes_split_each_epoch_and_log_once(ddp_runs):
    one = ddp_runs[0]
    log = _log(one)
    assert [r["step"] for r in log] == [1, 2, 3] and [r["epoch"] for r in log] == [1, 1, 2]
    # each optimizer step trains one clip per process; epoch 1 (4 clips) is the sampler's permutation,
    # every clip once: the processes share the epoch instead of each training all of it
    assert all(len(r["clips"]) == 2 for r in log)
    assert log[0]["clips"] + log[1]["clips"] == list(EpochSampler(4, 7))
    assert all(r["loss_feat"] > 0 for r in log)


def test_every_process_state_is_in_the_checkpoint(ddp_runs):
    one = ddp_runs[0]
    ckpt = max((one / "checkpoints").iterdir())
    assert ckpt.name == "step-00000003"
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((one / "summary.json").read_text())["global_step"] == 3
    assert not list((one / "checkpoints").glob(".tmp-*"))


def test_a_resumed_two_process_run_equals_an_uninterrupted_one(ddp_runs):
    one, two, out = ddp_runs
    assert out.count("resumed from") == 1 and "step-00000002" in out  # printed by the main process only
    assert out.count("run folder:") == 1
    assert [r["clips"] for r in _log(one)] == [r["clips"] for r in _log(two)]
    assert [r["loss"] for r in _log(one)] == [r["loss"] for r in _log(two)]
    a = load_file(str(one / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(two / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed DDP run diverged from the uninterrupted one"


def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    """Process 1 alone sees NaN: both stop with a clear error instead of process 0 waiting in the
    gradient all-reduce until the communication times out."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        str(_free_port()),
        str(ROOT / "tests" / "_ddp_check_finite.py"),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    said = {r: (tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    assert said[1].startswith("non-finite loss_diff = nan (process 1 of 2) at step 5 (epoch 1")
    assert said[0].startswith("non-finite loss on process(es) [1] at step 5")
