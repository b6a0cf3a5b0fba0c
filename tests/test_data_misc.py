"""Shared data machinery: frame cache, test clip lists, clip windows, pseudo-label boxes, the torch
dataset and collate, and the `python -m data.inspect` command."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from data.cache import FrameCache
from data.pseudo_boxes import PseudoBoxes
from data.sampling import ClipRef, clip_span, disjoint_refs, train_refs, windows
from data.synthetic import SyntheticDataset
from data.test_split import load_or_create_test_clips, read_test_clips, select_evenly, write_test_clips
from data.torch_dataset import ClipTorchDataset, collate_clips

PROJECT = Path(__file__).resolve().parents[1]
DASHCAM = PROJECT.parent / "shared" / "data" / "dashcam" / "solidWhiteRight.mp4"


# ---- windows and the test list -----------------------------------------------------------------
def test_windows_overlap_for_training_and_not_for_testing():
    assert clip_span(25, 1) == 25 and clip_span(3, 2) == 5
    assert windows(range(7), 3, 2, 1) == [(0, 2, 4), (1, 3, 5), (2, 4, 6)]
    seqs = {"s1": list(range(10)), "s2": list(range(4))}
    assert len(train_refs(seqs, 4, 1, 1)) == 7 + 1
    assert [(r.scene, r.frame_ids) for r in disjoint_refs(seqs, 4, 1)] == [
        ("s1", (0, 1, 2, 3)),
        ("s1", (4, 5, 6, 7)),
        ("s2", (0, 1, 2, 3)),
    ]
    with pytest.raises(ValueError, match="clip_len"):
        clip_span(0, 1)


def test_test_list_is_deterministic_saved_and_checked(tmp_path):
    seqs = {f"s{k}": list(range(100)) for k in range(3)}  # 12 disjoint 25-frame windows
    refs, path = load_or_create_test_clips("kitti", seqs, 25, 1, 5, None, tmp_path, root=tmp_path)
    assert [(r.scene, r.first_frame) for r in refs] == [("s0", 0), ("s0", 75), ("s1", 50), ("s2", 0), ("s2", 75)]
    again, path2 = load_or_create_test_clips("kitti", seqs, 25, 1, 5, None, tmp_path, root=tmp_path)
    assert again == refs and path2 == path
    # another clip length gets its own file instead of clashing with the saved one
    _, path3 = load_or_create_test_clips("kitti", seqs, 10, 1, 5, None, tmp_path, root=tmp_path)
    assert path3 != path
    # an explicit file made with other parameters is refused with the key that differs
    with pytest.raises(ValueError, match=r"made with clip_len=25 but the config has clip_len=10"):
        load_or_create_test_clips("kitti", seqs, 10, 1, 5, path, tmp_path)
    with pytest.raises(ValueError, match="dataset 'kitti', not 'nuscenes'"):
        read_test_clips(path, "nuscenes")
    with pytest.raises(ValueError, match=r"clips\[0\]: scene 's0' is not among the test scenes"):
        read_test_clips(path, "kitti", sequences={"other": range(100)})
    assert select_evenly(refs, 10) == refs


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d["clips"][1].update(first_frame=4), r"clips\[1\]: first_frame 4 is not frame_ids\[0\]"),
        (lambda d: d["clips"][1].update(first_frame=2, frame_ids=[2, 3, 4]), r"clips\[0\] and clips\[1\] overlap"),
        (lambda d: d["clips"][0].pop("scene"), r"clips\[0\]: needs scene"),
    ],
)
def test_test_list_errors_name_the_file_and_clip(tmp_path, edit, msg):
    path = write_test_clips(
        tmp_path / "t.json", "kitti", {"clip_len": 3}, [ClipRef("a", (0, 1, 2)), ClipRef("a", (3, 4, 5))]
    )
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=msg):
        read_test_clips(path)


# ---- frame cache -------------------------------------------------------------------------------
def test_frame_cache_keys_atomic_files_and_rebuild(tmp_path):
    decoded = []

    def decode(ids):
        decoded.extend(ids)
        for f in ids:
            yield f, np.full((4, 6, 3), f, np.uint8)

    cache = FrameCache(tmp_path, {"dataset": "x", "height": 4}, prefix="x")
    out = cache.frames("s", [2, 3], (4, 6, 3), decode)
    assert out.shape == (2, 4, 6, 3) and out[1].max() == 3 and decoded == [2, 3]
    assert cache.frames("s", [3, 2], (4, 6, 3), decode)[0].max() == 3 and decoded == [2, 3]  # hits
    assert json.loads((cache.dir / "key.json").read_text())["height"] == 4
    assert not list(cache.dir.rglob("*.tmp"))  # temp files were renamed away
    # a different preprocessing config is a different folder: decoded again
    other = FrameCache(tmp_path, {"dataset": "x", "height": 5}, prefix="x")
    assert other.dir != cache.dir
    other.frames("s", [2], (4, 6, 3), decode)
    assert decoded == [2, 3, 2]
    # a damaged or wrongly shaped file is a miss, not a crash
    cache.path("s", 2).write_bytes(b"garbage")
    np.save(cache.path("s", 3), np.zeros((9, 9, 3), np.uint8))
    cache.frames("s", [2, 3], (4, 6, 3), decode)
    assert decoded[-2:] == [2, 3]
    # disabled: always decodes, writes nothing
    off = FrameCache(None, {})
    off.frames("s", [1], (4, 6, 3), decode)
    assert decoded[-1] == 1 and not off.enabled


# ---- pseudo-label boxes ------------------------------------------------------------------------
@dataclass
class Det:
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


class FakeDetector:
    """Deterministic stand-in for a metrics detector: three detections per frame, one per
    (score, class) case, placed from the frame's mean so different frames differ."""

    instances = 0

    def __init__(self, offset: float = 0.0):
        FakeDetector.instances += 1
        self.offset, self.frames_seen = offset, 0

    def detect(self, frames):
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.frames_seen += len(frames)
        out = []
        for f in frames:
            x = float(f.mean()) % 20 + self.offset
            out.append(
                Det(
                    boxes=torch.tensor([[x, 2, x + 10, 12], [1, 1, 5, 5], [0, 0, 200, 9]], dtype=torch.float32),
                    scores=torch.tensor([0.9, 0.3, 0.8]),
                    labels=torch.tensor([2, 2, 9]),
                )
            )
        return out


def test_pseudo_boxes_filter_cache_and_share_frames(tmp_path):
    base = SyntheticDataset(num_clips=2, num_frames=4, height=32, width=48, seed=3)
    det = FakeDetector()
    ds = PseudoBoxes(base, detector=det, score_threshold=0.5, classes=[2, 7], batch_size=3, cache_dir=tmp_path)
    clip = ds[0]
    assert det.frames_seen == 4 and clip.meta["boxes_source"] == "detector"
    for j, (b, lab, tid) in enumerate(zip(clip.boxes, clip.labels, clip.track_ids)):
        x = float(clip.frames[j].mean()) % 20
        np.testing.assert_allclose(b, [[x, 2, x + 10, 12]], atol=1e-5)  # low score and class 9 are gone
        assert lab.tolist() == [2] and tid.tolist() == [-1]
    np.testing.assert_array_equal(clip.frames, base[0].frames)
    # a second wrapper over the same cache runs no detector; a looser threshold needs no new run
    det2 = FakeDetector()
    loose = PseudoBoxes(
        base, detector=det2, score_threshold=0.2, classes=None, cache_dir=tmp_path, cache_key="another detector version"
    )
    ds_again = PseudoBoxes(base, detector=det2, score_threshold=0.5, classes=[2], cache_dir=tmp_path)
    assert [len(b) for b in ds_again[0].boxes] == [1] * 4 and det2.frames_seen == 0
    assert [len(b) for b in loose[0].boxes] == [3] * 4  # other key: detected again, all kept
    assert det2.frames_seen == 4
    # the box of class 9 reached x=200 > width 48: clipped to the frame
    assert loose[0].boxes[0][:, 2].max() <= 48


def test_pseudo_boxes_from_config_via_hydra_instantiate(tmp_path):
    from data.registry import build_dataset

    cfg = OmegaConf.create(
        {
            "name": "synthetic",
            "height": 32,
            "width": 48,
            "clip_len": 3,
            "fps": 10.0,
            "boxes": "detector",
            "min_box_size": 1.0,
            "cache": {"dir": str(tmp_path)},
            "train": {"num_clips": 2, "seed": 0},
            "test": {"num_clips": 1, "seed": 99},
            "pseudo_boxes": {
                "detector": {"_target_": f"{__name__}.FakeDetector", "offset": 3.0},
                "score_threshold": 0.5,
                "classes": [2],
                "batch_size": 8,
                "cache": True,
            },
        }
    )
    before = FakeDetector.instances
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, PseudoBoxes) and FakeDetector.instances == before  # built lazily
    clip = ds[1]
    assert FakeDetector.instances == before + 1 and ds.detector.offset == 3.0
    assert all(b[0, 0] >= 3.0 for b in clip.boxes)
    # pickled for DataLoader workers without the detector; it is rebuilt from the config there
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._detector is None
    np.testing.assert_array_equal(clone[1].boxes[0], clip.boxes[0])  # served from the cache
    assert FakeDetector.instances == before + 1
    cfg.pseudo_boxes.detector = None
    with pytest.raises(ValueError, match="data.pseudo_boxes.detector"):
        build_dataset(cfg, "train")
    cfg.boxes = "yolo"
    with pytest.raises(ValueError, match="data.boxes='yolo'"):
        build_dataset(cfg, "train")


# ---- torch dataset -----------------------------------------------------------------------------
def test_torch_dataset_and_collate():
    clips = SyntheticDataset(num_clips=3, num_frames=5, height=32, width=48, seed=0)
    ds = ClipTorchDataset(clips)
    item = ds[1]
    assert item["frames"].shape == (5, 3, 32, 48) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1
    raw = clips[1].frames
    torch.testing.assert_close(item["frames"][2, 0], torch.from_numpy(raw[2, ..., 0]).float() / 127.5 - 1)
    assert len(item["boxes"]) == 5 and item["boxes"][0].dtype == torch.float32 and item["boxes"][0].shape[1] == 4
    assert item["labels"][0].dtype == torch.int64 and item["index"] == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_clips)
    batch = next(iter(loader))
    assert batch["frames"].shape == (2, 5, 3, 32, 48) and batch["index"].tolist() == [0, 1]
    assert len(batch["boxes"]) == 2 and len(batch["boxes"][0]) == 5
    torch.testing.assert_close(batch["boxes"][1][3], torch.from_numpy(clips[1].boxes[3]))
    assert batch["labels"][1][3].tolist() == clips[1].labels[3].tolist()
    with pytest.raises(ValueError, match="different shapes"):
        collate_clips([ds[0], ClipTorchDataset(SyntheticDataset(1, 4, 32, 48))[0]])


# ---- inspect -----------------------------------------------------------------------------------
def test_inspect_synthetic(tmp_path, capsys):
    from data.inspect import main

    out = main([f"inspect.out={tmp_path}/syn.png", "inspect.frames_per_clip=3"])
    text = capsys.readouterr().out
    assert "split train: 4 clips" in text and "split test: 2 clips" in text and "car" in text
    s = out["summaries"]["train"]
    assert s["boxes"] == sum(len(b) for i in range(4) for b in SyntheticDataset(4, 8, 64, 96, 0)[i].boxes)
    assert sum(s["hist"]) == s["boxes"]
    from PIL import Image

    img = np.asarray(Image.open(out["picture"]))
    assert img.shape[0] > 100 and img.shape[1] > 300 and img.std() > 10


@pytest.mark.skipif(not DASHCAM.is_file(), reason=f"real dash-cam video not found at {DASHCAM}")
def test_inspect_folder_with_real_video(tmp_path, capsys):
    from data.inspect import main

    root = tmp_path / "videos"
    root.mkdir()
    (root / "drive.mp4").symlink_to(DASHCAM)
    (root / "drive.json").write_text(
        json.dumps(
            {
                "version": 1,
                "frames": {
                    str(f): [{"box": [480 + 4 * f, 300, 600 + 4 * f, 380], "label": "car", "track_id": 0}]
                    for f in range(10)
                },
            }
        )
    )
    out = main(
        [
            "data=folder",
            f"data.root={root}",
            "data.max_frames=10",
            "data.clip_len=5",
            "data.height=160",
            "data.width=256",
            f"data.cache.dir={tmp_path}/cache",
            "inspect.splits=[train]",
            f"inspect.out={tmp_path}/folder.png",
        ]
    )
    text = capsys.readouterr().out
    assert "split train: 6 clips from 1 scenes" in text and "car" in text
    assert out["summaries"]["train"]["boxes"] == 6 * 5 and Path(out["picture"]).is_file()
