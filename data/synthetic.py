"""Synthetic traffic clips: the embedded default dataset of the smoke profile.

A pinhole camera at height `cam_h` looks down a straight road; ground points at depth Z and
lateral offset X project to (x, y) = (W/2 + f X / Z, y_horizon + f cam_h / Z). Lane dashes move
with the ego speed, and 1-4 vehicles drive in lanes at their own speed, so their boxes move and
scale consistently with perspective. Boxes are exact projections of the vehicles' fronts/backs.
Everything is deterministic in `seed`, for any size and length.
"""
from __future__ import annotations

import numpy as np

from data.clip import Clip

COCO_CAR, COCO_TRUCK = 2, 7
_LANE_CENTRES = (-3.6, 0.0, 3.6)          # metres, three lanes
_LANE_LINES = (-1.8, 1.8)                 # dashed markings
_ROAD_HALF_WIDTH = 5.4
_DASH_PERIOD, _DASH_LEN = 9.0, 3.0


def synthetic_clip(seed: int, num_frames: int = 25, height: int = 320, width: int = 512,
                   fps: float = 10.0) -> Clip:
    rng = np.random.default_rng(seed)
    H, W = height, width
    f = 0.8 * W                                  # focal length in pixels
    y_h = 0.42 * H                               # horizon row
    cam_h = 1.5
    ego_speed = rng.uniform(8.0, 20.0)           # m/s
    dt = 1.0 / fps

    n_vehicles = int(rng.integers(1, 5))
    vehicles = []
    for k in range(n_vehicles):
        is_truck = rng.random() < 0.25
        vehicles.append(dict(
            track_id=k,
            label=COCO_TRUCK if is_truck else COCO_CAR,
            X=float(rng.choice(_LANE_CENTRES)) + rng.uniform(-0.3, 0.3),
            Z0=rng.uniform(8.0, 45.0),
            v_rel=rng.uniform(-6.0, 6.0),        # speed relative to ego
            width=2.5 if is_truck else 1.8,
            height=3.2 if is_truck else 1.5,
            colour=rng.integers(40, 230, size=3).astype(np.uint8),
        ))

    sky_top = np.array([110, 160, 225], np.float32)
    sky_bottom = np.array([200, 220, 240], np.float32)
    grass = rng.uniform(0.8, 1.1) * np.array([70, 120, 60], np.float32)
    asphalt = rng.uniform(0.8, 1.2) * np.array([85, 85, 90], np.float32)

    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(W, dtype=np.float32)[None, :] + 0.5
    below = rows > y_h
    Z = np.where(below, f * cam_h / np.maximum(rows - y_h, 1e-3), 1e9)  # depth of each ground pixel (far above the horizon)
    X = (cols - W / 2) * Z / f                                               # lateral offset

    frames = np.empty((num_frames, H, W, 3), np.uint8)
    boxes, labels, tracks = [], [], []
    for j in range(num_frames):
        t = j * dt
        img = np.empty((H, W, 3), np.float32)
        sky_w = np.clip(rows / max(y_h, 1.0), 0, 1)[..., None]
        img[:] = (1 - sky_w) * sky_top + sky_w * sky_bottom
        ground = np.broadcast_to(below, (H, W))
        img[ground] = grass
        road = ground & (np.abs(X) < _ROAD_HALF_WIDTH)
        img[road] = asphalt
        # dashes move towards the camera as the ego car drives forward
        phase = (Z + ego_speed * t) % _DASH_PERIOD < _DASH_LEN
        for xm in _LANE_LINES:
            img[road & (np.abs(X - xm) < 0.1) & phase] = 235
        img[road & (np.abs(np.abs(X) - (_ROAD_HALF_WIDTH - 0.2)) < 0.1)] = 235  # solid edges

        frame_boxes, frame_labels, frame_tracks = [], [], []
        # painter's order: far vehicles first
        for v in sorted(vehicles, key=lambda v: -(v["Z0"] + v["v_rel"] * t)):
            z = v["Z0"] + v["v_rel"] * t
            if z < 3.0:
                continue
            x1 = W / 2 + f * (v["X"] - v["width"] / 2) / z
            x2 = W / 2 + f * (v["X"] + v["width"] / 2) / z
            y2 = y_h + f * cam_h / z
            y1 = y2 - f * v["height"] / z
            bx = np.clip([x1, y1, x2, y2], [0, 0, 0, 0], [W, H, W, H])
            if bx[2] - bx[0] < 1 or bx[3] - bx[1] < 1:
                continue
            c0, r0, c1, r1 = int(round(bx[0])), int(round(bx[1])), int(round(bx[2])), int(round(bx[3]))
            img[r0:r1, c0:c1] = v["colour"]
            # windows and a shadow make the object more than a flat rectangle
            wr1 = r0 + max(1, (r1 - r0) // 3)
            img[r0 + max(1, (r1 - r0) // 8):wr1, c0 + max(1, (c1 - c0) // 8):c1 - max(1, (c1 - c0) // 8)] = (40, 50, 60)
            img[max(r1 - max(1, (r1 - r0) // 10), r0):r1, c0:c1] = (25, 25, 25)
            frame_boxes.append(bx)
            frame_labels.append(v["label"])
            frame_tracks.append(v["track_id"])
        frames[j] = np.clip(img, 0, 255).astype(np.uint8)
        boxes.append(np.array(frame_boxes, np.float32).reshape(-1, 4))
        labels.append(np.array(frame_labels, np.int64))
        tracks.append(np.array(frame_tracks, np.int64))

    return Clip(frames=frames, boxes=boxes, labels=labels, track_ids=tracks,
                meta=dict(dataset="synthetic", scene=f"seed{seed}", seed=seed, fps=fps,
                          frame_ids=list(range(num_frames))))


class SyntheticDataset:
    """`num_clips` synthetic clips; clip i uses seed `seed + i` (train and test use disjoint seeds)."""

    def __init__(self, num_clips: int = 8, num_frames: int = 25, height: int = 320, width: int = 512,
                 seed: int = 0, fps: float = 10.0):
        self.num_clips, self.num_frames, self.height, self.width = num_clips, num_frames, height, width
        self.seed, self.fps = seed, fps

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> Clip:
        if not 0 <= i < self.num_clips:
            raise IndexError(i)
        return synthetic_clip(self.seed + i, self.num_frames, self.height, self.width, self.fps)
