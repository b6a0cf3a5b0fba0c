"""nuScenes CAM_FRONT loader (data/nuscenes.py) on a tiny nuScenes-format database written here.

The database: one scene, 3 keyframes 0.5 s apart and CAM_FRONT sweeps at 12 Hz (13 frames), a
moving and turning ego car, and annotations: a car driving and turning ahead (interpolated on
sweeps), a car cut by the image's right edge, a car straddling the camera plane, a car behind the
camera, a pedestrian that appears only from the second keyframe, and a barrier (not dynamic).
Expected 2D boxes are computed independently of the devkit (scipy rotations and slerp, a convex
hull and polygon clipping written here) and compared with the loader's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation, Slerp

from data.nuscenes import resample_by_time

W, H = 1600, 900
K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
KEY_T = [0.0, 0.5, 1.0]  # keyframe times (s)
SWEEP_T = [round(k / 12.0 * 1e6) / 1e6 for k in range(13)]  # CAM_FRONT frames (whole µs); 0, 6, 12 are keyframes
T0_US = 1_600_000_000_000_000
CAM_T = np.array([1.70, 0.02, 1.51])
# camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up), slightly yawed
CAM_R = Rotation.from_euler("z", 1.5, degrees=True) * Rotation.from_matrix(
    np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
)


def ego_pose(t):
    yaw = np.deg2rad(30.0 + 4.0 * t)
    pos = np.array([100.0, 200.0, 0.0]) + 6.0 * t * np.array([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30)), 0.0])
    return pos, Rotation.from_euler("z", yaw)


def ego_to_global(p_ego, t):
    pos, rot = ego_pose(t)
    return rot.apply(p_ego) + pos


def _q(rot: Rotation) -> list[float]:
    x, y, z, w = rot.as_quat()  # scipy is scalar-last; nuScenes stores [w, x, y, z]
    return [float(w), float(x), float(y), float(z)]


# instance -> (category, visibility, {keyframe index: (centre global, yaw degrees)}, size wlh)
def _instances():
    def at(ego_xyz, t, yaw_rel):
        return ego_to_global(np.array(ego_xyz, float), t), 30.0 + 4.0 * t + yaw_rel

    return {
        "car_ahead": (
            "vehicle.car",
            "4",
            {k: at([14.0 + 2.0 * t, 1.0, 0.8], t, 20.0 * t) for k, t in enumerate(KEY_T)},
            [1.9, 4.5, 1.6],
        ),
        "car_edge": (
            "vehicle.truck",
            "3",
            {k: at([9.0, -6.5, 1.2], t, 0.0) for k, t in enumerate(KEY_T)},
            [2.5, 7.0, 3.0],
        ),
        "car_straddle": (
            "vehicle.car",
            "2",
            {k: at([0.05, -1.2, 0.8], t, 0.0) for k, t in enumerate(KEY_T)},
            [1.9, 4.5, 1.6],
        ),
        "car_behind": (
            "vehicle.car",
            "4",
            {k: at([-10.0, 0.0, 0.8], t, 0.0) for k, t in enumerate(KEY_T)},
            [1.9, 4.5, 1.6],
        ),
        "ped_late": (
            "human.pedestrian.adult",
            "1",
            {k: at([20.0, 3.0, 0.9], KEY_T[k], 0.0) for k in (1, 2)},
            [0.6, 0.7, 1.8],
        ),
        "barrier": (
            "movable_object.barrier",
            "4",
            {k: at([12.0, -2.0, 0.5], t, 0.0) for k, t in enumerate(KEY_T)},
            [2.0, 0.5, 1.0],
        ),
    }


def write_db(root: Path, version: str = "v1.0-test") -> Path:
    """A tiny but complete nuScenes database (the JSON tables the devkit loads, frames, a map)."""
    tables: dict[str, list] = {
        n: []
        for n in [
            "category",
            "attribute",
            "visibility",
            "instance",
            "sensor",
            "calibrated_sensor",
            "ego_pose",
            "log",
            "scene",
            "sample",
            "sample_data",
            "sample_annotation",
            "map",
        ]
    }
    tables["log"].append(dict(token="log0", logfile="l", vehicle="v", date_captured="2020-01-01", location="x"))
    (root / "maps").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "maps" / "m.png")
    tables["map"].append(dict(token="map0", log_tokens=["log0"], category="semantic_prior", filename="maps/m.png"))
    tables["visibility"] = [dict(token=str(v), level=f"v{v}", description="") for v in range(1, 5)]
    tables["sensor"].append(dict(token="sensor_cf", channel="CAM_FRONT", modality="camera"))
    tables["calibrated_sensor"].append(
        dict(
            token="cs_cf",
            sensor_token="sensor_cf",
            translation=CAM_T.tolist(),
            rotation=_q(CAM_R),
            camera_intrinsic=K.tolist(),
        )
    )
    samples = [f"sample{k}" for k in range(len(KEY_T))]
    for k, t in enumerate(KEY_T):
        tables["sample"].append(
            dict(
                token=samples[k],
                timestamp=T0_US + int(round(t * 1e6)),
                scene_token="scene0",
                prev=samples[k - 1] if k else "",
                next=samples[k + 1] if k + 1 < len(KEY_T) else "",
            )
        )
    tables["scene"].append(
        dict(
            token="scene0",
            log_token="log0",
            nbr_samples=len(KEY_T),
            name="scene-0001",
            description="tiny",
            first_sample_token=samples[0],
            last_sample_token=samples[-1],
        )
    )
    for j, t in enumerate(SWEEP_T):
        key = j % 6 == 0
        pos, rot = ego_pose(t)
        tables["ego_pose"].append(
            dict(token=f"ep{j}", timestamp=T0_US + int(round(t * 1e6)), translation=pos.tolist(), rotation=_q(rot))
        )
        folder = "samples" if key else "sweeps"
        fname = f"{folder}/CAM_FRONT/frame{j:02d}.jpg"
        (root / fname).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), 10 * j + 5, np.uint8)).save(root / fname, quality=95)
        tables["sample_data"].append(
            dict(
                token=f"sd{j}",
                sample_token=samples[-(-j // 6)],  # a sweep belongs to the next keyframe
                ego_pose_token=f"ep{j}",
                calibrated_sensor_token="cs_cf",
                timestamp=T0_US + int(round(t * 1e6)),
                fileformat="jpg",
                is_key_frame=key,
                height=H,
                width=W,
                filename=fname,
                prev=f"sd{j - 1}" if j else "",
                next=f"sd{j + 1}" if j + 1 < len(SWEEP_T) else "",
            )
        )
    cats = {}
    for name, (cat, vis, poses, size) in _instances().items():
        if cat not in cats:
            cats[cat] = f"cat{len(cats)}"
            tables["category"].append(dict(token=cats[cat], name=cat, description=""))
        keys = sorted(poses)
        ann = [f"ann_{name}_{k}" for k in keys]
        tables["instance"].append(
            dict(
                token=f"inst_{name}",
                category_token=cats[cat],
                nbr_annotations=len(keys),
                first_annotation_token=ann[0],
                last_annotation_token=ann[-1],
            )
        )
        for i, k in enumerate(keys):
            centre, yaw = poses[k]
            tables["sample_annotation"].append(
                dict(
                    token=ann[i],
                    sample_token=samples[k],
                    instance_token=f"inst_{name}",
                    visibility_token=vis,
                    attribute_tokens=[],
                    translation=centre.tolist(),
                    size=size,
                    rotation=_q(Rotation.from_euler("z", yaw, degrees=True)),
                    prev=ann[i - 1] if i else "",
                    next=ann[i + 1] if i + 1 < len(keys) else "",
                    num_lidar_pts=10,
                    num_radar_pts=0,
                )
            )
    (root / version).mkdir(parents=True)
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows))
    return root


# ---- the independent computation ---------------------------------------------------------------
def _clip_polygon(poly: np.ndarray, w: float, h: float) -> np.ndarray:
    """Sutherland-Hodgman clipping of a convex polygon to [0,w]x[0,h]."""
    for axis, bound, keep_less in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        inside = (
            (lambda p, axis=axis, bound=bound: p[axis] <= bound)
            if keep_less
            else (lambda p, axis=axis, bound=bound: p[axis] >= bound)
        )
        out = []
        for a, b in zip(poly, np.roll(poly, -1, axis=0)):
            if inside(a):
                out.append(a)
            if inside(a) != inside(b):
                s = (bound - a[axis]) / (b[axis] - a[axis])
                out.append(a + s * (b - a))
        poly = np.array(out)
        if len(poly) == 0:
            return poly
    return poly


def expected_boxes(j: int) -> dict[str, np.ndarray]:
    """Category-mapped dynamic objects visible in CAM_FRONT frame j -> xyxy in 1600x900 pixels."""
    t = SWEEP_T[j]
    nxt = -(-j // 6)  # index of the keyframe this frame belongs to
    prv = nxt - 1
    out = {}
    for name, (cat, _vis, poses, size) in _instances().items():
        if cat == "movable_object.barrier" or nxt not in poses:
            continue
        if j % 6 == 0 or prv < 0 or prv not in poses:
            centre, rot = poses[nxt][0], Rotation.from_euler("z", poses[nxt][1], degrees=True)
        else:
            a = (t - KEY_T[prv]) / (KEY_T[nxt] - KEY_T[prv])
            centre = (1 - a) * poses[prv][0] + a * poses[nxt][0]
            rots = Rotation.from_euler("z", [[poses[prv][1]], [poses[nxt][1]]], degrees=True)
            rot = Slerp([0.0, 1.0], rots)([a])[0]
        w, l, h = size
        local = np.array([[sx * l / 2, sy * w / 2, sz * h / 2] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)])
        corners = rot.apply(local) + centre
        pos, ego_rot = ego_pose(t)
        cam = CAM_R.inv().apply(ego_rot.inv().apply(corners - pos) - CAM_T)
        cam = cam[cam[:, 2] > 0]
        if len(cam) < 3:
            continue
        uv = (K @ cam.T).T
        uv = uv[:, :2] / uv[:, 2:3]
        hull = uv[ConvexHull(uv).vertices]
        clipped = _clip_polygon(hull, W, H)
        if len(clipped) < 3:
            continue
        out[name] = np.concatenate([clipped.min(0), clipped.max(0)])
    return out


# ---- tests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nusc_root(tmp_path_factory):
    pytest.importorskip("nuscenes.nuscenes", reason="nuscenes-devkit not installed (pip install -e '.[nuscenes]')")
    return write_db(tmp_path_factory.mktemp("nuscenes"))


def make_cfg(root, tmp_path, **over):
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "data" / "nuscenes.yaml")
    del cfg["defaults"]
    cfg.root, cfg.version = str(root), "v1.0-test"
    cfg.height, cfg.width, cfg.clip_len = 90, 160, 5
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.train.scenes = ["scene-0001"]
    cfg.test.scenes = ["scene-0001"]
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def test_projected_boxes_match_an_independent_computation(nusc_root, tmp_path):
    from data.nuscenes import NuScenesClips

    ds = NuScenesClips(make_cfg(nusc_root, tmp_path), "train")
    inst_rank = {f"inst_{n}": i for i, n in enumerate(_instances())}  # instance table order = track id
    seen = set()
    for j in range(len(SWEEP_T)):
        boxes, labels, tracks = ds.source_annotations("scene-0001", j)
        exp = expected_boxes(j)
        names = [n for n, r in sorted(((n, inst_rank[f"inst_{n}"]) for n in exp), key=lambda x: x[1])]
        got = {int(t): (b, int(lab)) for b, lab, t in zip(boxes, labels, tracks)}
        assert sorted(got) == sorted(inst_rank[f"inst_{n}"] for n in names), f"frame {j}"
        for n in names:
            b, lab = got[inst_rank[f"inst_{n}"]]
            np.testing.assert_allclose(b, exp[n], atol=1e-3, err_msg=f"frame {j} {n}")
            assert lab == {"car_ahead": 2, "car_edge": 7, "car_straddle": 2, "ped_late": 0}[n]
            seen.add(n)
    # the scenario exercises what it claims to: clipping at the edge, interpolation, late instance
    assert seen == {"car_ahead", "car_edge", "car_straddle", "ped_late"}
    edge = ds.source_annotations("scene-0001", 3)[0][
        ds.source_annotations("scene-0001", 3)[2] == inst_rank["inst_car_edge"]
    ]
    assert edge[0, 2] == pytest.approx(W)
    b0, b3, b6 = (ds.source_annotations("scene-0001", j)[0][0] for j in (0, 3, 6))
    assert not np.allclose(b3, b0) and not np.allclose(b3, b6)  # a sweep box lies between keyframes


def test_clips_frames_boxes_and_meta(nusc_root, tmp_path):
    from data.nuscenes import NuScenesClips

    ds = NuScenesClips(make_cfg(nusc_root, tmp_path), "train")
    assert len(ds) == len(SWEEP_T) - 5 + 1
    clip = ds[2]
    assert clip.frames.shape == (5, 90, 160, 3)
    # frame j was written with grey value 10 j + 5: the clip holds frames 2..6 in order
    np.testing.assert_allclose(clip.frames.reshape(5, -1).mean(1), [10 * j + 5 for j in range(2, 7)], atol=2)
    for j, (b, lab) in enumerate(zip(clip.boxes, clip.labels)):
        src = ds.source_annotations("scene-0001", 2 + j)[0]
        np.testing.assert_allclose(
            b, np.clip(src * [160 / W, 90 / H, 160 / W, 90 / H], 0, [160, 90, 160, 90]), atol=1e-3
        )
        assert set(lab.tolist()) <= {0, 2, 7}
    m = clip.meta
    assert m["sampling"] == "sweeps" and m["frame_ids"] == [2, 3, 4, 5, 6]
    assert m["fps_measured"] == pytest.approx(12.0, rel=1e-3)
    assert m["sample_data_tokens"] == [f"sd{j}" for j in range(2, 7)]
    # the second read comes from the frame cache, identical
    np.testing.assert_array_equal(ds[2].frames, clip.frames)
    assert len(list(Path(ds.cache.dir).glob("scene-0001/*.npy"))) == 5


def test_visibility_filter_and_classes_from_config(nusc_root, tmp_path):
    from data.nuscenes import NuScenesClips

    ds = NuScenesClips(make_cfg(nusc_root, tmp_path, visibilities=["3", "4"], classes={"vehicle.car": 2}), "train")
    _, labels, tracks = ds.source_annotations("scene-0001", 12)
    # only car_ahead: car_straddle has visibility 2, the truck and pedestrian are not in classes
    assert labels.tolist() == [2] and tracks.tolist() == [0]


def test_fps_resampling_and_the_test_list(nusc_root, tmp_path):
    from data.nuscenes import NuScenesClips

    cfg = make_cfg(nusc_root, tmp_path, sampling="fps", target_fps=4.0, clip_len=2)
    tr = NuScenesClips(cfg, "train")
    assert [r.frame_ids for r in tr.refs] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert tr[0].meta["sampling"] == "fps" and tr.fps("scene-0001") == 4.0
    te = NuScenesClips(cfg, "test")
    assert [r.frame_ids for r in te.refs] == [(0, 3), (6, 9)]  # disjoint windows
    doc = json.loads(te.test_clips_file.read_text())
    assert doc["params"]["sampling"] == "fps" and doc["params"]["target_fps"] == 4.0


def test_bad_config_and_missing_frames(nusc_root, tmp_path):
    from data.nuscenes import NuScenesClips, resolve_scene_names

    with pytest.raises(ValueError, match="data.train.scenes.*scene-9999"):
        NuScenesClips(make_cfg(nusc_root, tmp_path, **{"train.scenes": ["scene-9999"]}), "train")
    with pytest.raises(ValueError, match="data.sampling"):
        NuScenesClips(make_cfg(nusc_root, tmp_path, sampling="keyframes"), "train")
    assert resolve_scene_names("train", "v1.0-mini", "k")[:1] == ["scene-0061"]
    assert len(resolve_scene_names("val", "v1.0-trainval", "k")) == 150
    with pytest.raises(ValueError, match="data.test.scenes='valid'"):
        resolve_scene_names("valid", "v1.0-trainval", "data.test.scenes")
    ds = NuScenesClips(make_cfg(nusc_root, tmp_path, **{"cache.enabled": False}), "train")
    moved = nusc_root / "sweeps" / "CAM_FRONT" / "frame01.jpg"
    moved.rename(moved.with_suffix(".bak"))
    try:
        with pytest.raises(FileNotFoundError, match="frame01.jpg"):
            ds[0]
    finally:
        moved.with_suffix(".bak").rename(moved)


def test_dataset_pickles_without_the_devkit_object(nusc_root, tmp_path):
    import pickle

    from data.nuscenes import NuScenesClips

    ds = NuScenesClips(make_cfg(nusc_root, tmp_path, **{"cache.enabled": False}), "train")
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000
    np.testing.assert_array_equal(pickle.loads(blob)[1].frames, ds[1].frames)


def test_resample_by_time():
    ts = [int(round(k / 12.0 * 1e6)) for k in range(25)]
    assert resample_by_time(ts, 6.0) == list(range(0, 25, 2))
    assert resample_by_time(ts, 100.0) == list(range(25))  # no repeated frames when upsampling
    assert resample_by_time(ts[:1], 7.0) == [0]
    with pytest.raises(ValueError, match="target_fps"):
        resample_by_time(ts, 0.0)
