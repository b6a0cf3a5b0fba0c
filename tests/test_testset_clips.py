"""A testset folder (benchmark/testset.py) gives back the clips it was written from: frames, boxes,
labels, track ids; the evaluate stage scores against them when det.reference=dataset."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from benchmark.testset import read_clip, write_testset
from data.cli import InputError
from data.registry import build_dataset


def test_read_clip_returns_the_written_clip(tmp_path):
    data = OmegaConf.load("configs/data/mini_nuscenes.yaml")
    data.test.num_clips = 2
    cfg = {"data": OmegaConf.to_container(data), "benchmark": {"generate": {"save_mp4": False}}}
    res = write_testset(cfg, tmp_path)
    for k, name in enumerate(res["clips"]):
        want, got = build_dataset(data, "test")[k], read_clip(tmp_path, name)
        np.testing.assert_array_equal(got.frames, want.frames)
        for a, b in zip(got.boxes, want.boxes):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
        assert [x.tolist() for x in got.labels] == [x.tolist() for x in want.labels]
        assert [x.tolist() for x in got.track_ids] == [x.tolist() for x in want.track_ids]
        assert sum(len(b) for b in got.boxes) > 0  # the world has vehicles: the check can fail
    (tmp_path / "boxes" / "clip_0000.json").write_text("{")
    with pytest.raises(InputError, match="clip_0000.json"):
        read_clip(tmp_path, "clip_0000")
