"""The synthetic worlds of the mini profile (data/synthetic.py): deterministic, exact boxes, distinct domains."""

from __future__ import annotations

import numpy as np
import pytest

from data.synthetic import (
    COCO_CAR,
    COCO_TRUCK,
    WORLDS,
    SyntheticDataset,
    get_world,
    synthetic_clip,
)

MINI_WORLDS = ("source", "nuscenes", "kitti")


@pytest.mark.parametrize("world", MINI_WORLDS)
def test_world_is_deterministic_in_seed(world):
    a, b = synthetic_clip(5, 6, 64, 96, world=world), synthetic_clip(5, 6, 64, 96, world=world)
    c = synthetic_clip(6, 6, 64, 96, world=world)
    assert np.array_equal(a.frames, b.frames)
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert not np.array_equal(a.frames, c.frames)


def test_default_world_is_the_smoke_world():
    """The smoke profile's clips are those of World() (their stage hashes and results stay valid)."""
    a, b = synthetic_clip(3, 4, 32, 48), synthetic_clip(3, 4, 32, 48, world="default")
    assert np.array_equal(a.frames, b.frames) and a.meta["dataset"] == "synthetic"


@pytest.mark.parametrize("world", MINI_WORLDS)
def test_boxes_enclose_exactly_the_vehicle_pixels(world):
    """Rendered without occlusion, every box is exactly the set of pixels painted by its vehicle."""
    w = get_world(world)
    checked = 0
    for seed in range(6):
        clip = synthetic_clip(seed, 4, 64, 96, world=w)
        for frame, boxes, labels, tracks in zip(clip.frames, clip.boxes, clip.labels, clip.track_ids):
            assert set(labels.tolist()) <= {COCO_CAR, COCO_TRUCK}
            assert len(set(tracks.tolist())) == len(tracks)
            for i, box in enumerate(boxes):
                c0, r0, c1, r1 = (round(v) for v in box)
                assert 0 <= c0 < c1 <= 96 and 0 <= r0 < r1 <= 64
                if _occluded(i, boxes):
                    continue
                checked += 1
                # the shadow stripe at the bottom of each vehicle is (25,25,25), which no background has
                assert (frame[r1 - 1, c0:c1] == 25).all()
                if r1 < 64:  # the row below the box is background, not shadow
                    assert not (frame[r1, c0:c1] == 25).all()
                if c1 < 96:  # nor the column right of it
                    assert not (frame[r1 - 1, c1] == 25).all()
    assert checked > 10


def _occluded(i: int, boxes) -> bool:
    return any(_overlaps(boxes[i], b) for j, b in enumerate(boxes) if j != i)


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def test_target_worlds_give_each_class_one_colour():
    for name in ("nuscenes", "kitti"):
        palette = get_world(name).palette
        checked = set()
        for seed in range(6):
            clip = synthetic_clip(seed, 2, 64, 96, world=name)
            boxes = clip.boxes[0]
            for i, (box, label) in enumerate(zip(boxes, clip.labels[0])):
                if _occluded(i, boxes):
                    continue
                c0, r0, c1, r1 = (round(v) for v in box)
                # between the windows (top third) and the shadow (bottom tenth)
                row = (r0 + max(1, (r1 - r0) // 3) + r1 - max(1, (r1 - r0) // 10)) // 2
                body = clip.frames[0][row, (c0 + c1) // 2].astype(int)
                assert np.abs(body - np.array(palette[int(label)])).max() <= get_world(name).colour_jitter
                checked.add(int(label))
        assert checked == {COCO_CAR, COCO_TRUCK}, (name, checked)


def test_worlds_differ_in_look():
    """Source and targets are different domains: their mean colours are far apart."""
    means = {
        w: np.mean([synthetic_clip(s, 2, 64, 96, world=w).frames.mean((0, 1, 2)) for s in range(4)], 0)
        for w in MINI_WORLDS
    }
    for a in MINI_WORLDS:
        for b in MINI_WORLDS:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 10, (a, b)


def test_vehicles_move_and_boxes_follow():
    clip = synthetic_clip(2, 8, 64, 96, world="nuscenes")
    tid = clip.track_ids[0][0]
    first = clip.boxes[0][clip.track_ids[0] == tid]
    last = clip.boxes[7][clip.track_ids[7] == tid]
    assert len(first) == 1 and (len(last) == 0 or not np.allclose(first, last))


def test_unknown_world_is_a_clear_error():
    with pytest.raises(ValueError, match="data.world='mars'"):
        SyntheticDataset(world="mars")
    assert set(MINI_WORLDS) | {"default"} == set(WORLDS)


def test_data_config_selects_the_world():
    from omegaconf import OmegaConf

    from data.registry import build_dataset

    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "world": "kitti",
            "height": 32,
            "width": 48,
            "clip_len": 3,
            "fps": 10.0,
            "train": {"num_clips": 2, "seed": 0},
            "test": {"num_clips": 1, "seed": 99},
        }
    )
    clip = build_dataset(cfg, "train")[1]
    assert clip.meta["dataset"] == "synthetic-kitti"
    assert np.array_equal(clip.frames, synthetic_clip(1, 3, 32, 48, 10.0, "kitti").frames)
