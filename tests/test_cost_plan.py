"""The cost plan `--dry-run` prints (benchmark/cost.py) and the SLURM settings it checks: GPU-hours
from the measured H200 step times and the epoch sizes, checkpoints, time-limit and GPU-memory
warnings; CPU-only kinds ask for no GPU (slurm/config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ablations.registry import load_table
from benchmark.config import HydraResolver
from benchmark.cost import cost_lines, estimate
from benchmark.identity import ContentIdentity
from benchmark.stages import expand, select
from slurm.config import executor_parameters, kind_settings, load_cluster

ROOT = Path(__file__).resolve().parents[1]
PERF = json.loads((ROOT / "results" / "perf" / "nvidia-h200.json").read_text())
ROWS = ["nuscenes_lsa", "kitti_ctrlv_1to0"]


@pytest.fixture(scope="module")
def paper():
    """Table I's nuScenes LSA row and a KITTI Ctrl-V row on the paper profile (hashes by location:
    no input is read; the cost does not depend on them)."""
    return expand(load_table("I").select(ROWS), HydraResolver("paper"), ContentIdentity(legacy=True))


def never(_h):
    return False


def test_train_hours_are_clips_per_epoch_times_the_measured_step(paper):
    cost = select(paper.rows[0].cfg, "benchmark.cost")
    lsa = [
        s for s in paper.order() if s.kind == "train" and s.params["objective"] == "lsa" and "nuscenes_lsa" in s.rows
    ]
    assert len(lsa) == 1
    e = estimate(lsa[0], cost, PERF)
    step = PERF["steps"]["unet (compiled)"]["lsa"]["median_s"]  # the paper profile compiles decoder and DINOv2
    assert e.hours == pytest.approx(cost["train_windows"]["nuscenes"] * step / 3600)
    assert 25 < e.hours < 30  # the nuScenes LSA epoch: ~27 h on an H200
    # a full checkpoint: fp32 U-Net + AdamW moments, ~17 GiB; every 100 optimizer steps of 5 clips
    assert e.ckpt_gib == pytest.approx(1524623082 * 12 / 1024**3) and 16.5 < e.ckpt_gib < 17.5
    assert e.written == 73500 // 5 // 100 + 1 and e.kept == 2
    testset = next(s for s in paper.order() if s.kind == "testset")
    assert estimate(testset, cost, PERF).hours == 0.0


def test_dry_run_plan_warns_over_the_time_limit_and_without_a_gpu_constraint(paper):
    lines = cost_lines(paper, never, load_cluster("default"))
    text = "\n".join(lines)
    assert lines[0].startswith("Cost of table I") and "NVIDIA H200" in lines[0] and "nvidia-h200.json" in lines[0]
    over = [ln for ln in lines if ln.startswith("warning: train ") and "(nuscenes_lsa)" in ln]
    assert len(over) == 1 and "time limit 24 h" in over[0] and "requeues" in over[0]
    assert "warning: train needs a GPU with >= 80 GB" in text
    assert "frame cache (data.cache.dir): kitti ~4 GB, nuscenes ~100 GB" in text

    roomy = load_cluster(
        "default",
        [
            "slurm.kinds.train.time_min=2880",
            "slurm.kinds.train.gpu_constraint=h100|h200",
            "slurm.kinds.train.gpus_per_task=2",
        ],
    )
    text = "\n".join(cost_lines(paper, never, roomy))
    assert "warning: train " not in text and "train needs a GPU" not in text

    none_pending = cost_lines(paper, lambda h: True, load_cluster("default"))
    assert not [ln for ln in none_pending if ln.startswith("warning: train ")]
    assert any(ln.startswith("  table I: 0.0 GPU-h pending") for ln in none_pending)


def test_smoke_profile_prints_no_cost_plan(tmp_path):
    from benchmark.run_table import run_table

    lines: list[str] = []
    run_table("III", HydraResolver("smoke"), None, store=tmp_path / "runs", dry_run=True, echo=lines.append)
    assert not any("Cost of table" in ln for ln in lines)


def test_gpu_constraint_only_for_gpu_kinds_and_cpu_kinds_ask_for_no_gpu(tmp_path):
    c = load_cluster(
        "default",
        [
            "slurm.job.constraint=ib",
            "slurm.job.gpu_constraint=h100|h200",
            "slurm.job.additional={gres: 'gpu:a100:1', reservation: r1}",
        ],
    )

    def params(kind):
        return executor_parameters(
            kind_settings(c, kind),
            name=kind,
            array_parallelism=1,
            chdir=tmp_path,
            pythonpath="/x",
            kill_on_invalid_dep=False,
        )

    train, testset, render = params("train"), params("testset"), params("render")
    assert train["slurm_constraint"] == "(ib)&(h100|h200)" and train["gpus_per_node"] == 1
    assert train["slurm_additional_parameters"]["gres"] == "gpu:a100:1"
    for cpu in (testset, render):
        assert "gpus_per_node" not in cpu and cpu["slurm_constraint"] == "ib"
        assert "gres" not in cpu["slurm_additional_parameters"]
        assert cpu["slurm_additional_parameters"]["reservation"] == "r1"
    assert kind_settings(load_cluster("default"), "train")["gpu_mem_gb"] == 80
