"""Test-wide settings: offline hubs, small thread counts, tiny models cached once per session."""

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test` runs `-n auto`) the cores are shared out among the workers, and
# the processes a test starts inherit that share: oversubscribed torch threads run small ops
# several times slower.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parents[1]
# Processes the tests start (`accelerate launch` workers, shard workers, `python -m benchmark.run
# runner=fakes:FakeRunner`) import the test double tests/fakes.py as `fakes`, as pytest's process does.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data folder {SHARED_DATA} is absent (see docs/data.md, 'Real test data')")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """One cache folder for the tiny random SVD / DINOv2 of the whole session."""
    cache = tmp_path_factory.mktemp("lsa-cache")
    os.environ["LSA_BENCH_CACHE"] = str(cache)
    return cache


# The longest modules (minutes each on the 2-core dev CPU, `pytest --durations`) go first, so that
# under `-n auto --dist loadscope --no-loadscope-reorder` (the Makefile; without that flag xdist
# orders modules by their number of tests instead) the workers end together instead of one finishing
# a long module alone at the end. Only the order changes; every test still runs.
LONGEST_FIRST = (
    "test_slurm_cluster.py",  # ~5 minutes of waiting for SLURM jobs, which run beside the other workers
    "test_benchmark_perf.py",
    "test_mini_table.py",
    "test_rehearsal.py",
    "test_damage.py",
    "test_kill_every_stage.py",
    "test_trainer_alignment.py",
    "test_preflight.py",
    "test_trainer_ddp.py",
    "test_trainer_tracking.py",
    "test_benchmark_stages.py",
    "test_trainer_loop.py",
    "test_shards.py",
    "test_mini_detector.py",
    "test_backbone_ltx.py",
    "test_benchmark_tables.py",
)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, and one more where SLURM's client is installed: the worker of
    tests/test_slurm_cluster.py mostly sleeps while its jobs run on the same cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1 if shutil.which("squeue") else cores


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
