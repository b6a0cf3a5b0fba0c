"""Folder-of-videos loader (data/folder.py): the real dash-cam mp4 (first 10 frames only) and
frame folders written here, with and without boxes JSON."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from data.folder import VideoFolder, discover_videos
from data.transforms import resize_frame
from data.video_io import read_video

PROJECT = Path(__file__).resolve().parents[1]
DASHCAM = PROJECT.parent / "shared" / "data" / "dashcam" / "solidWhiteRight.mp4"
needs_dashcam = pytest.mark.skipif(not DASHCAM.is_file(), reason=f"real dash-cam video not found at {DASHCAM}")


def folder_cfg(root, tmp_path, **over):
    cfg = OmegaConf.load(PROJECT / "configs" / "data" / "folder.yaml")
    del cfg["defaults"]
    cfg.root, cfg.cache.dir = str(root), str(tmp_path / "cache")
    cfg.height, cfg.width, cfg.clip_len, cfg.max_frames = 64, 96, 4, 10
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def write_frames(folder: Path, n: int, hw=(60, 80)):
    folder.mkdir(parents=True)
    for f in range(n):
        Image.new("RGB", hw[::-1], (10 * f, 100, 200)).save(folder / f"img_{f:03d}.png")


def write_boxes(path: Path, frames: dict, **extra):
    path.write_text(json.dumps({"version": 1, **extra, "frames": frames}))


@needs_dashcam
def test_real_mp4_with_boxes_json(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "drive.mp4").symlink_to(DASHCAM)
    write_boxes(
        root / "drive.json",
        {
            "0": [
                {"box": [480, 270, 720, 405], "label": "car", "track_id": 4},
                {"box": [10, 10, 30, 60], "label": 9},
            ],  # traffic light: not dynamic
            "2": [{"box": [900, 500, 1000, 600], "label": 7}],  # clipped at the right edge
            "40": [{"box": [1, 1, 5, 5], "label": "car"}],  # beyond max_frames: ignored
        },
    )
    ds = VideoFolder(folder_cfg(root, tmp_path), "train")
    assert len(ds) == 10 - 4 + 1 and ds.fps("drive") == pytest.approx(25.0)
    clip = ds[0]
    expected = np.stack([resize_frame(f, 64, 96) for f in read_video(DASHCAM, max_frames=4)])
    np.testing.assert_array_equal(clip.frames, expected)
    sx, sy = 96 / 960, 64 / 540
    np.testing.assert_allclose(clip.boxes[0], [[480 * sx, 270 * sy, 720 * sx, 405 * sy]], atol=1e-4)
    assert clip.labels[0].tolist() == [2] and clip.track_ids[0].tolist() == [4]
    np.testing.assert_allclose(clip.boxes[2], [[900 * sx, 500 * sy, 96, 64]], atol=1e-4)
    assert [len(b) for b in clip.boxes] == [1, 0, 1, 0] and clip.meta["has_boxes"]
    # the video was decoded once: all 10 frames are cached, later clips come from the cache
    assert len(list(Path(ds.cache.dir).glob("drive/*.npy"))) == 10
    np.testing.assert_array_equal(ds[6].frames[-1], resize_frame(read_video(DASHCAM, max_frames=10)[9], 64, 96))
    assert len(pickle.loads(pickle.dumps(ds))) == len(ds)


def test_frame_folders_splits_and_box_image_size(tmp_path):
    root = tmp_path / "videos"
    write_frames(root / "a", 6)
    write_frames(root / "b", 5)
    (root / "notes.txt").write_text("not a video")
    # boxes given for a 120x160 version of the 60x80 frames
    write_boxes(root / "a.json", {"1": [{"box": [40, 30, 80, 90], "label": "person"}]}, image_size=[120, 160])
    assert list(discover_videos(root)) == ["a", "b"]
    cfg = folder_cfg(root, tmp_path, fps=5.0, stride=2, clip_len=2, **{"test.videos": ["b"]})
    tr, te = VideoFolder(cfg, "train"), VideoFolder(cfg, "test")
    assert {r.scene for r in tr.refs} == {"a"} and {r.scene for r in te.refs} == {"b"}
    assert tr.fps("a") == 2.5 and [r.frame_ids for r in tr.refs] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    clip = tr[1]  # frames 1, 3
    np.testing.assert_allclose(clip.boxes[0], [[40 * 96 / 160, 30 * 64 / 120, 80 * 96 / 160, 90 * 64 / 120]], atol=1e-4)
    assert clip.labels[0].tolist() == [0] and len(clip.boxes[1]) == 0
    assert clip.frames[1, 0, 0, 0] == 30  # frame 3 was written with red 10 * 3
    assert [r.frame_ids for r in te.refs] == [(0, 2)]  # disjoint: (0,2) then (3,5) does not fit 5 frames
    nobox = te[0]
    assert nobox.meta["boxes_source"] == "none" and all(len(b) == 0 for b in nobox.boxes)
    # test.videos: null -> every video train.videos does not name
    cfg2 = folder_cfg(root, tmp_path, **{"train.videos": ["a"], "test.videos": None})
    assert {r.scene for r in VideoFolder(cfg2, "test").refs} == {"b"}


@pytest.mark.parametrize(
    "doc, msg",
    [
        ({"version": 1, "frames": {"0": [{"box": [1, 2, 3], "label": 2}]}}, r"frames\['0'\]\[0\]: 'box' must be"),
        ({"version": 1, "frames": {"0": [{"box": [5, 2, 3, 4], "label": 2}]}}, r"frames\['0'\]\[0\]: box .* x2 < x1"),
        (
            {"version": 1, "frames": {"0": [{"box": [1, 2, 3, 4], "label": "lorry"}]}},
            r"frames\['0'\]\[0\]: label 'lorry'",
        ),
        ({"version": 1, "frames": {"x": []}}, r"frames\['x'\]: frame keys are 0-based"),
        ({"frames": {}}, r"boxes file version None"),
        ({"version": 1, "image_size": [60], "frames": {}}, r"image_size must be \[height, width\]"),
    ],
)
def test_bad_boxes_json_names_file_and_entry(tmp_path, doc, msg):
    root = tmp_path / "videos"
    write_frames(root / "a", 3)
    (root / "a.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"a\.json: " + msg):
        VideoFolder(folder_cfg(root, tmp_path), "train")


def test_invalid_json_and_empty_root(tmp_path):
    root = tmp_path / "videos"
    write_frames(root / "a", 3)
    (root / "a.json").write_text('{"version": 1,\n "frames": {,}}')
    with pytest.raises(ValueError, match=r"a\.json:2: not valid JSON"):
        VideoFolder(folder_cfg(root, tmp_path), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no videos"):
        VideoFolder(folder_cfg(tmp_path / "empty", tmp_path), "train")
    with pytest.raises(ValueError, match=r"data.test.videos names \['zz'\]"):
        VideoFolder(folder_cfg(root, tmp_path, **{"test.videos": ["zz"]}), "test")
