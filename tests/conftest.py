"""Test-wide settings: offline hubs, small thread counts, tiny models cached once per session."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

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
