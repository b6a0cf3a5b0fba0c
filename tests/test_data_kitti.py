"""KITTI Tracking loader (data/kitti.py) on the real label files of the test data folder
(docs/data.md, "Real test data"), with 375x1242 frames written here (KITTI's images are not shipped)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from data.kitti import KITTI_FIELDS, KittiTracking, parse_label_line, read_label_file

PROJECT = Path(__file__).resolve().parents[1]
LABELS = PROJECT.parent / "shared" / "data" / "kitti_tracking" / "training" / "label_02"
H0, W0 = 375, 1242
SCENE_LEN = {"0012": 78, "0014": 106}  # frames per scene (last labelled frame + 1)
MARK = ("0012", 10)  # frame whose first object's box is painted red

needs_labels = pytest.mark.skipif(not LABELS.is_dir(), reason=f"real KITTI labels not found at {LABELS}")


def kitti_cfg(root, tmp_path, **over):
    cfg = OmegaConf.load(PROJECT / "configs" / "data" / "kitti.yaml")
    del cfg["defaults"]
    cfg.root, cfg.cache.dir = str(root), str(tmp_path / "cache")
    cfg.train.scenes, cfg.test.scenes = ["0012"], ["0014"]
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def simple_parse(path: Path, frame: int):
    """Independent reading of one frame's objects: (type, track id, box) of non-DontCare lines."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    return [
        (r[2], int(r[1]), np.array(r[6:10], float))
        for r in rows
        if int(r[0]) == frame and r[2] not in ("DontCare", "Misc")
    ]


def make_root(root: Path, scenes=SCENE_LEN) -> Path:
    (root / "training" / "label_02").mkdir(parents=True)
    for scene, n in scenes.items():
        shutil.copy(LABELS / f"{scene}.txt", root / "training" / "label_02" / f"{scene}.txt")
        d = root / "training" / "image_02" / scene
        d.mkdir(parents=True)
        for f in range(n):
            img = Image.new("RGB", (W0, H0), (20 + f % 200, 60, 90))
            if (scene, f) == MARK:
                _, _, box = simple_parse(LABELS / f"{scene}.txt", f)[0]
                ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
            img.save(d / f"{f:06d}.png", compress_level=1)
    return root


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    if not LABELS.is_dir():
        pytest.skip(f"real KITTI labels not found at {LABELS}")
    return make_root(tmp_path_factory.mktemp("kitti"))


# ---- label parsing -----------------------------------------------------------------------------
def test_parse_every_field_and_the_optional_score():
    line = (
        "0 2 Pedestrian 0 1 -2.523309 1106.137292 166.576807 1204.470628 323.876144 1.714062 0.767881 "
        "0.972283 6.301919 1.652419 8.455685 -1.900245"
    )
    lab = parse_label_line(line, "x.txt", 7)
    assert len(KITTI_FIELDS) == 17
    assert (lab.frame, lab.track_id, lab.type, lab.truncated, lab.occluded) == (0, 2, "Pedestrian", 0.0, 1)
    assert (lab.alpha, lab.h, lab.w, lab.l) == (-2.523309, 1.714062, 0.767881, 0.972283)
    assert (lab.x, lab.y, lab.z, lab.rotation_y) == (6.301919, 1.652419, 8.455685, -1.900245)
    np.testing.assert_allclose(lab.bbox, [1106.137292, 166.576807, 1204.470628, 323.876144])
    assert lab.score is None and lab.line == 7
    assert parse_label_line(line + " 0.93", "x.txt", 1).score == pytest.approx(0.93)


@pytest.mark.parametrize(
    "line, msg",
    [
        ("0 2 Car 0 0 -1 1 2 3", r"x\.txt:5: expected 17 fields"),
        ("0 2 Car 0 0 -1 abc 2 3 4 1 1 1 1 1 1 1", r"x\.txt:5: field 'x1' = 'abc' is not a number"),
        ("0.5 2 Car 0 0 -1 1 2 3 4 1 1 1 1 1 1 1", r"x\.txt:5: field 'frame' = '0.5' is not an integer"),
    ],
)
def test_malformed_lines_name_file_and_line(line, msg):
    with pytest.raises(ValueError, match=msg):
        parse_label_line(line, "x.txt", 5)


@needs_labels
def test_all_real_label_files_parse_and_their_types_are_configured():
    cfg = OmegaConf.load(PROJECT / "configs" / "data" / "kitti.yaml")
    known = set(cfg.classes) | set(cfg.ignore_types)
    types, n = set(), 0
    for path in sorted(LABELS.glob("*.txt")):
        labels = read_label_file(path)
        n += len(labels)
        types |= {lab.type for lab in labels}
        assert all(lab.track_id == -1 for lab in labels if lab.type == "DontCare")
    assert n > 40000 and types <= known and {"Car", "Pedestrian", "Cyclist", "Van"} <= types


# ---- clips -------------------------------------------------------------------------------------
def test_windows_boxes_and_track_ids(kitti_root, tmp_path):
    ds = KittiTracking(kitti_cfg(kitti_root, tmp_path), "train")
    assert len(ds) == 78 - 25 + 1
    assert len(KittiTracking(kitti_cfg(kitti_root, tmp_path, **{"train.window_step": 5}), "train")) == 11
    strided = KittiTracking(kitti_cfg(kitti_root, tmp_path, stride=2), "train")
    assert len(strided) == 78 - 49 + 1 and strided.refs[0].frame_ids[:3] == (0, 2, 4)
    assert strided.fps("0012") == 5.0
    clip = ds[3]
    assert clip.frames.shape == (25, 320, 512, 3) and clip.frames.dtype == np.uint8
    assert clip.meta["frame_ids"] == list(range(3, 28)) and clip.meta["source_hw"] == [375, 1242]
    classes = dict(kitti_cfg(kitti_root, tmp_path).classes)
    scale = np.array([512 / W0, 320 / H0, 512 / W0, 320 / H0])
    for j, f in enumerate(clip.meta["frame_ids"]):
        exp = simple_parse(LABELS / "0012.txt", f)
        assert clip.track_ids[j].tolist() == [t for _, t, _ in exp]
        assert clip.labels[j].tolist() == [classes[ty] for ty, _, _ in exp]
        np.testing.assert_allclose(
            clip.boxes[j], np.clip([b * scale for _, _, b in exp], 0, [512, 320, 512, 320]), atol=1e-3
        )
        # frame f was written with red channel 20 + f: frames come in order
        assert abs(int(clip.frames[j, 5, 5, 0]) - (20 + f)) <= 1


def test_boxes_stay_on_their_objects_after_resizing(kitti_root, tmp_path):
    ds = KittiTracking(kitti_cfg(kitti_root, tmp_path), "train")
    clip = ds[MARK[1]]  # its first frame is the marked one
    x1, y1, x2, y2 = clip.boxes[0][0]
    red = (clip.frames[0, ..., 0] > 200) & (clip.frames[0, ..., 1] < 60)
    inside = red[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
    assert inside.mean() > 0.99
    ys, xs = np.nonzero(red)
    assert xs.min() >= x1 - 1.5 and xs.max() <= x2 + 0.5 and ys.min() >= y1 - 1.5 and ys.max() <= y2 + 0.5


def test_degenerate_boxes_are_dropped_and_counted(tmp_path):
    root = tmp_path / "k"
    (root / "training" / "label_02").mkdir(parents=True)
    (root / "training" / "image_02" / "0000").mkdir(parents=True)
    for f in range(3):
        Image.new("RGB", (W0, H0)).save(root / "training" / "image_02" / "0000" / f"{f:06d}.png")
    rest = "1 1 1 1 1 1 1"
    (root / "training" / "label_02" / "0000.txt").write_text(
        "\n".join(
            [
                f"0 0 Car 0 0 0 100 100 300 200 {rest}",  # kept
                f"0 1 Car 0 0 0 1300 100 1400 200 {rest}",  # entirely right of the image
                f"1 2 Van 0 0 0 500 100 501 200 {rest}",  # 1 px wide -> 0.41 px after resizing
                f"1 -1 DontCare -1 -1 -10 0 0 50 50 {rest}",  # not an object
                f"2 3 Tram 0 0 0 -50 -20 100 400 {rest}",  # clipped to the image, kept
            ]
        )
        + "\n"
    )
    cfg = kitti_cfg(root, tmp_path, clip_len=3, **{"train.scenes": ["0000"], "test.scenes": ["0000"]})
    clip = KittiTracking(cfg, "train")[0]
    assert [len(b) for b in clip.boxes] == [1, 0, 1]
    assert clip.meta["dropped_boxes"] == 2
    np.testing.assert_allclose(clip.boxes[2][0], [0, 0, 100 * 512 / W0, 320], atol=1e-4)
    assert clip.labels[2].tolist() == [6] and clip.track_ids[2].tolist() == [3]


def _broken_root(tmp_path, label_text, n_frames=3, drop_frame=None):
    root = tmp_path / "bad"
    (root / "training" / "label_02").mkdir(parents=True)
    d = root / "training" / "image_02" / "0000"
    d.mkdir(parents=True)
    for f in range(n_frames):
        if f != drop_frame:
            Image.new("RGB", (W0, H0)).save(d / f"{f:06d}.png")
    (root / "training" / "label_02" / "0000.txt").write_text(label_text)
    return kitti_cfg(root, tmp_path, clip_len=2, **{"train.scenes": ["0000"]})


def test_bad_input_names_file_line_or_frame(tmp_path):
    ok = "0 0 Car 0 0 0 1 1 50 50 1 1 1 1 1 1 1\n"
    with pytest.raises(ValueError, match=r"0000\.txt:2: expected 17 fields"):
        KittiTracking(_broken_root(tmp_path / "a", ok + "1 0 Car 0 0\n"), "train")
    with pytest.raises(ValueError, match=r"0000\.txt:2: label for frame 7, but .*0000 has frames 0\.\.2"):
        KittiTracking(_broken_root(tmp_path / "b", ok + ok.replace("0 0 Car", "7 0 Car", 1)), "train")
    with pytest.raises(FileNotFoundError, match=r"missing frame .*0000/000001\.png"):
        KittiTracking(_broken_root(tmp_path / "c", ok, drop_frame=1), "train")
    with pytest.raises(ValueError, match=r"0000\.txt:1: type 'Bus' is neither in data.classes"):
        KittiTracking(_broken_root(tmp_path / "d", ok.replace("Car", "Bus")), "train")
    cfg = _broken_root(tmp_path / "e", ok)
    cfg.root = None
    with pytest.raises(ValueError, match="data.root is not set"):
        KittiTracking(cfg, "train")
    cfg = _broken_root(tmp_path / "f", ok)
    cfg.train.scenes = ["0003"]
    with pytest.raises(FileNotFoundError, match=r"image_02/0003"):
        KittiTracking(cfg, "train")


def test_frame_of_another_size_is_an_error(tmp_path):
    cfg = _broken_root(tmp_path, "0 0 Car 0 0 0 1 1 50 50 1 1 1 1 1 1 1\n")
    Image.new("RGB", (1224, 370)).save(Path(cfg.root) / "training/image_02/0000/000001.png")
    ds = KittiTracking(cfg, "train")
    with pytest.raises(ValueError, match=r"000001\.png: 370x1224"):
        ds[0]


# ---- test split, cache, registry ---------------------------------------------------------------
def test_test_clips_are_disjoint_saved_and_reused(kitti_root, tmp_path):
    cfg = kitti_cfg(kitti_root, tmp_path, **{"test.num_clips": 3})
    te = KittiTracking(cfg, "test")
    assert [r.first_frame for r in te.refs] == [0, 50, 75]  # 3 of the 4 disjoint windows
    doc = json.loads(te.test_clips_file.read_text())
    assert doc["version"] == 1 and doc["num_candidates"] == 4
    assert doc["clips"][1] == {"dataset": "kitti", "scene": "0014", "first_frame": 50, "frame_ids": list(range(50, 75))}
    # a later run reads the saved list rather than choosing again
    doc["clips"] = doc["clips"][:2]
    te.test_clips_file.write_text(json.dumps(doc))
    assert [r.first_frame for r in KittiTracking(cfg, "test").refs] == [0, 50]
    # all 4 when the split holds fewer than num_clips (the default 200)
    assert len(KittiTracking(kitti_cfg(kitti_root, tmp_path), "test")) == 4


def test_cached_frames_are_reused_and_rebuilt_when_the_config_changes(kitti_root, tmp_path):
    root = make_root(tmp_path / "copy", {"0012": 78})
    cfg = kitti_cfg(root, tmp_path, clip_len=4, **{"test.scenes": ["0012"]})
    ds = KittiTracking(cfg, "train")
    assert ds.prepare(progress=False) == 78  # every frame decoded once, up front
    assert len(list(Path(ds.cache.dir).glob("0012/*.npy"))) == 78
    first = ds[0].frames
    shutil.rmtree(root / "training" / "image_02" / "0012")
    (root / "training" / "image_02" / "0012").mkdir()
    for f in range(78):  # new pixels, same names: only a cache miss would show them
        Image.new("RGB", (W0, H0), (0, 0, 0)).save(root / "training/image_02/0012" / f"{f:06d}.png", compress_level=1)
    np.testing.assert_array_equal(KittiTracking(cfg, "train")[0].frames, first)
    assert KittiTracking(cfg, "train")[-1].frames.max() > 0  # the last clip too came from the cache
    resized = KittiTracking(kitti_cfg(root, tmp_path, clip_len=4, width=256), "train")[0].frames
    assert resized.shape == (4, 320, 256, 3) and resized.max() == 0


def test_registry_builds_kitti(kitti_root, tmp_path):
    from data.registry import build_dataset

    ds = build_dataset(kitti_cfg(kitti_root, tmp_path), "test")
    assert isinstance(ds, KittiTracking) and ds[0].meta["split"] == "test"
