"""nuScenes CAM_FRONT clips through nuscenes-devkit (`pip install -e .[nuscenes]`).

Layout under data.root: the devkit's own (samples/, sweeps/, maps/, v1.0-trainval/ or v1.0-mini/).
A scene's frames are its camera's sample_data chain from the first to the last keyframe, sweeps
included (~12 Hz). Each frame's boxes are the devkit's boxes for that sample_data (keyframe
annotations, linearly interpolated on sweeps by `NuScenes.get_boxes`), moved global -> ego ->
camera by `get_sample_data`, and projected as the devkit's export_2d_annotations_as_json does:
corners in front of the camera (z > 0), `view_points`, the convex hull intersected with the image
canvas (`post_process_coords`), min/max.

Frame sampling (data.sampling): `sweeps` takes consecutive sweep frames (Ctrl-V's protocol);
`fps` resamples each scene to data.target_fps by timestamps (nearest frame). Frame ids are
always indices into the full chain, so the cache and test_clips.json do not depend on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.base import ClipDataset, require_root
from data.cli import InputError, MissingFile
from data.sampling import ClipRef

_LOADED: dict[tuple[str, str], object] = {}  # one NuScenes object per (root, version) and process


def load_nuscenes(root: str | Path, version: str):
    try:
        from nuscenes.nuscenes import NuScenes
    except ImportError as e:
        raise ImportError(f"data.name=nuscenes needs nuscenes-devkit: pip install -e '.[nuscenes]' ({e})") from e
    key = (str(Path(root).resolve()), str(version))
    if key not in _LOADED:
        if not (Path(root) / version).is_dir():
            raise MissingFile(
                f"{Path(root) / version} not found: data.version={version!r} "
                f"must name a table folder under data.root={root}"
            )
        _LOADED[key] = NuScenes(version=version, dataroot=str(root), verbose=False)
    return _LOADED[key]


def resolve_scene_names(spec, version: str, key: str) -> list[str]:
    """A devkit split name ('train', 'val', 'mini_train', ...) or an explicit list of scene names.
    On v1.0-mini, 'train' and 'val' mean the devkit's mini_train / mini_val."""
    if isinstance(spec, str):
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes(verbose=False)
        name = f"mini_{spec}" if version == "v1.0-mini" and spec in ("train", "val") else spec
        if name not in splits:
            raise InputError(f"{key}={spec!r} is not a devkit split; valid: {sorted(splits)} or a list of scene names")
        return list(splits[name])
    return [str(s) for s in spec]


def camera_chain(nusc, scene: dict, camera: str) -> list[dict]:
    """The camera's sample_data records from the scene's first keyframe to its last keyframe."""
    first = nusc.get("sample", scene["first_sample_token"])
    last = nusc.get("sample", scene["last_sample_token"])
    if camera not in first["data"]:
        raise InputError(f"scene {scene['name']}: no {camera} data (data.camera); has {sorted(first['data'])}")
    sd = nusc.get("sample_data", first["data"][camera])
    end = last["data"][camera]
    chain = [sd]
    while sd["token"] != end:
        if not sd["next"]:
            raise InputError(f"scene {scene['name']}: the {camera} chain ends before the last keyframe")
        sd = nusc.get("sample_data", sd["next"])
        chain.append(sd)
    return chain


def resample_by_time(timestamps_us: Sequence[int], target_fps: float) -> list[int]:
    """Indices of the frames nearest to t0, t0 + 1/fps, ... (consecutive repeats removed)."""
    if target_fps <= 0:
        raise InputError(f"data.target_fps must be > 0, got {target_fps}")
    if len(timestamps_us) < 2:
        return list(range(len(timestamps_us)))
    t = (np.asarray(timestamps_us, np.float64) - timestamps_us[0]) / 1e6
    targets = np.arange(0.0, t[-1] + 1e-9, 1.0 / target_fps)
    right = np.clip(np.searchsorted(t, targets), 1, len(t) - 1)
    left = right - 1
    idx = np.where(np.abs(t[left] - targets) <= np.abs(t[right] - targets), left, right)
    keep = np.concatenate([[True], idx[1:] != idx[:-1]])
    return [int(i) for i in idx[keep]]


def project_box(box, intrinsic: np.ndarray, imsize: tuple[int, int]):
    """The devkit's 2D export of one box already in camera coordinates: (x1,y1,x2,y2) or None."""
    from nuscenes.scripts.export_2d_annotations_as_json import post_process_coords
    from nuscenes.utils.geometry_utils import view_points

    corners = box.corners()
    corners = corners[:, corners[2, :] > 0]  # only corners in front of the camera
    if corners.shape[1] == 0:
        return None
    coords = view_points(corners, intrinsic, True).T[:, :2].tolist()
    try:
        return post_process_coords(coords, imsize)
    except AttributeError:
        # fewer than 3 usable corners, or a hull touching the canvas only along an edge: the
        # intersection is a point/line without `.exterior`, i.e. a zero-area box
        return None


class NuScenesClips(ClipDataset):
    """Clips of one camera (CAM_FRONT) of the scenes of `data.<split>.scenes`."""

    name = "nuscenes"

    def __init__(self, cfg, split: str):
        super().__init__(cfg, split)
        self.root = require_root(cfg)
        self.version, self.camera = str(cfg.version), str(cfg.get("camera", "CAM_FRONT"))
        self.sampling = str(cfg.get("sampling", "sweeps"))
        if self.sampling not in ("sweeps", "fps"):
            raise InputError(f"data.sampling={self.sampling!r}: use 'sweeps' or 'fps'")
        self.target_fps = float(cfg.target_fps) if self.sampling == "fps" else None
        self._nominal_fps = float(self.target_fps or cfg.fps) / self.stride
        self.classes = {str(k): int(v) for k, v in cfg.classes.items()}
        vis = cfg.get("visibilities")
        self.visibilities = None if vis is None else {str(v) for v in vis}
        self._memo: dict[tuple[str, int], tuple] = {}

        nusc = self.nusc
        names = resolve_scene_names(cfg[split].scenes, self.version, f"data.{split}.scenes")
        by_name = {s["name"]: s for s in nusc.scene}
        absent = [n for n in names if n not in by_name]
        if absent:
            raise InputError(
                f"data.{split}.scenes: {len(absent)} scene(s) not in {self.root / self.version}, "
                f"e.g. {absent[:3]} (is data.version={self.version!r} right?)"
            )
        self.tokens: dict[str, list[str]] = {}
        self.timestamps: dict[str, list[int]] = {}
        self.hw: dict[str, tuple[int, int]] = {}
        sequences = {}
        for n in names:
            chain = camera_chain(nusc, by_name[n], self.camera)
            self.tokens[n] = [sd["token"] for sd in chain]
            self.timestamps[n] = [int(sd["timestamp"]) for sd in chain]
            self.hw[n] = (int(chain[0]["height"]), int(chain[0]["width"]))
            sequences[n] = (
                list(range(len(chain)))
                if self.sampling == "sweeps"
                else resample_by_time(self.timestamps[n], self.target_fps)
            )
        self._setup(
            cfg,
            sequences,
            cache_key={"root": str(self.root.resolve()), "version": self.version, "camera": self.camera},
            test_params={
                "version": self.version,
                "camera": self.camera,
                "sampling": self.sampling,
                "target_fps": self.target_fps,
            },
        )

    # The devkit object is large; DataLoader workers get the tokens and reload it lazily if needed.
    @property
    def nusc(self):
        if getattr(self, "_nusc", None) is None:
            self._nusc = load_nuscenes(self.root, self.version)
        return self._nusc

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_nusc"] = None
        return state

    def fps(self, scene: str) -> float:
        return self._nominal_fps

    def source_hw(self, scene: str) -> tuple[int, int]:
        return self.hw[scene]

    def source_annotations(self, scene: str, frame_id: int):
        key = (scene, frame_id)
        if key not in self._memo:
            self._memo[key] = self._project_frame(self.tokens[scene][frame_id])
        return self._memo[key]

    def _project_frame(self, sd_token: str):
        from nuscenes.utils.geometry_utils import BoxVisibility

        nusc = self.nusc
        sd = nusc.get("sample_data", sd_token)
        _, boxes, intrinsic = nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.NONE)
        out_boxes, out_labels, out_tracks = [], [], []
        for box in boxes:
            if box.name not in self.classes:
                continue
            ann = nusc.get("sample_annotation", box.token)
            if self.visibilities is not None and ann["visibility_token"] not in self.visibilities:
                continue
            xyxy = project_box(box, intrinsic, (int(sd["width"]), int(sd["height"])))
            if xyxy is None:
                continue
            out_boxes.append(xyxy)
            out_labels.append(self.classes[box.name])
            out_tracks.append(nusc.getind("instance", ann["instance_token"]))
        return (
            np.asarray(out_boxes, np.float64).reshape(-1, 4),
            np.asarray(out_labels, np.int64),
            np.asarray(out_tracks, np.int64),
        )

    def decode(self, scene: str, frame_ids: list[int]) -> Iterator[tuple[int, Image.Image]]:
        for f in frame_ids:
            sd = self.nusc.get("sample_data", self.tokens[scene][f])
            path = self.root / sd["filename"]
            if not path.is_file():
                raise MissingFile(f"missing frame {path} (scene {scene}, sample_data {sd['token']})")
            img = Image.open(path).convert("RGB")
            if (img.height, img.width) != self.hw[scene]:
                raise InputError(
                    f"{path}: {img.height}x{img.width}, its sample_data record says {sd['height']}x{sd['width']}"
                )
            yield f, img

    def extra_meta(self, ref: ClipRef) -> dict:
        ts = self.timestamps[ref.scene]
        t0, t1 = ts[ref.frame_ids[0]], ts[ref.frame_ids[-1]]
        measured = (len(ref.frame_ids) - 1) / ((t1 - t0) / 1e6) if t1 > t0 else None
        return {
            "sampling": self.sampling,
            "target_fps": self.target_fps,
            "fps_measured": measured,
            "camera": self.camera,
            "version": self.version,
            "sample_data_tokens": [self.tokens[ref.scene][f] for f in ref.frame_ids],
        }
