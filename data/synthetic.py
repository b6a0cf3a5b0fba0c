"""Synthetic traffic clips: the embedded datasets of the smoke and mini profiles.

A pinhole camera at height `cam_h` looks down a straight road; ground points at depth Z and
lateral offset X project to (x, y) = (W/2 + f X / Z, y_horizon + f cam_h / Z). Lane dashes move
with the ego speed, and vehicles drive in lanes at their own speed, so their boxes move and
scale consistently with perspective. Boxes are exact projections of the vehicles' fronts/backs.
Everything is deterministic in `seed`, for any size and length.

A `World` holds everything that makes one domain look and move as it does (camera, road layout,
colours, speeds, traffic). `WORLDS` names them:
- `default`: the smoke profile's clips (random vehicle colours, three lanes);
- `source`: the mini profile's pretraining world, the stand-in for SVD's web-scale data: a higher
  camera, a dusty two-lane road, other sky and ground colours, faster traffic;
- `nuscenes`, `kitti`: the mini profile's target worlds, the stand-ins for the two paper datasets:
  each its own camera, road and palette, with one distinct colour per vehicle class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data.clip import Clip

COCO_CAR, COCO_TRUCK = 2, 7


@dataclass(frozen=True)
class World:
    """One synthetic domain. Lengths in metres, speeds in m/s, colours RGB 0-255.

    `palette` None draws every vehicle's body colour at random; otherwise {COCO class: RGB} gives
    each class one colour, jittered by +-`colour_jitter` per vehicle.
    """

    cam_h: float = 1.5
    horizon: float = 0.42  # horizon row as a fraction of the height
    focal: float = 0.8  # focal length as a fraction of the width
    lanes: tuple = (-3.6, 0.0, 3.6)  # lane centres
    lane_lines: tuple = (-1.8, 1.8)  # dashed markings
    road_half_width: float = 5.4
    dash_period: float = 9.0
    dash_len: float = 3.0
    ego_speed: tuple = (8.0, 20.0)
    num_vehicles: tuple = (1, 5)  # [low, high) vehicles per clip
    truck_prob: float = 0.25
    lateral_jitter: float = 0.3
    depth: tuple = (8.0, 45.0)  # initial distance of a vehicle
    v_rel: tuple = (-6.0, 6.0)  # speed relative to the ego car
    min_depth: float = 3.0  # closer vehicles have left the view
    palette: dict | None = None
    colour_jitter: int = 12
    sky_top: tuple = (110, 160, 225)
    sky_bottom: tuple = (200, 220, 240)
    ground: tuple = (70, 120, 60)
    asphalt: tuple = (85, 85, 90)
    ground_gain: tuple = (0.8, 1.1)  # per-clip brightness of ground and road
    asphalt_gain: tuple = (0.8, 1.2)
    marking: int = 235
    dims: dict = field(default_factory=lambda: {COCO_CAR: (1.8, 1.5), COCO_TRUCK: (2.5, 3.2)})  # width, height


WORLDS: dict[str, World] = {
    "default": World(),
    "source": World(
        cam_h=2.6,
        horizon=0.34,
        focal=0.9,
        lanes=(-1.8, 1.8),
        lane_lines=(0.0,),
        road_half_width=3.6,
        ego_speed=(14.0, 26.0),
        num_vehicles=(1, 4),
        truck_prob=0.35,
        depth=(7.0, 30.0),
        v_rel=(-9.0, 9.0),
        sky_top=(170, 150, 200),
        sky_bottom=(235, 215, 190),
        ground=(150, 125, 80),
        asphalt=(110, 100, 95),
    ),
    "nuscenes": World(
        cam_h=1.5,
        horizon=0.45,
        focal=1.0,
        lanes=(-1.75, 1.75),
        lane_lines=(0.0,),
        road_half_width=3.5,
        ego_speed=(3.0, 9.0),
        num_vehicles=(1, 4),
        truck_prob=0.3,
        depth=(6.0, 22.0),
        v_rel=(-4.0, 4.0),
        palette={COCO_CAR: (200, 40, 40), COCO_TRUCK: (40, 70, 200)},
        sky_top=(150, 160, 170),
        sky_bottom=(205, 205, 200),
        ground=(125, 125, 120),
        asphalt=(70, 70, 75),
    ),
    "kitti": World(
        cam_h=1.65,
        horizon=0.40,
        focal=0.9,
        lanes=(-3.5, 0.0, 3.5),
        lane_lines=(-1.75, 1.75),
        road_half_width=5.25,
        ego_speed=(6.0, 14.0),
        num_vehicles=(1, 4),
        truck_prob=0.3,
        depth=(6.0, 24.0),
        v_rel=(-5.0, 5.0),
        palette={COCO_CAR: (230, 200, 40), COCO_TRUCK: (240, 240, 240)},
        sky_top=(120, 170, 230),
        sky_bottom=(215, 230, 245),
        ground=(60, 130, 50),
        asphalt=(90, 90, 95),
    ),
}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"data.world={name!r} is unknown; valid: {sorted(WORLDS)}")
    return WORLDS[name]


def _vehicles(rng: np.random.Generator, w: World) -> list[dict]:
    vehicles = []
    for k in range(int(rng.integers(*w.num_vehicles))):
        is_truck = rng.random() < w.truck_prob
        label = COCO_TRUCK if is_truck else COCO_CAR
        width, height = w.dims[label]
        v = dict(
            track_id=k,
            label=label,
            X=float(rng.choice(w.lanes)) + rng.uniform(-w.lateral_jitter, w.lateral_jitter),
            Z0=rng.uniform(*w.depth),
            v_rel=rng.uniform(*w.v_rel),
            width=width,
            height=height,
        )
        if w.palette is None:
            v["colour"] = rng.integers(40, 230, size=3).astype(np.uint8)
        else:
            jitter = rng.integers(-w.colour_jitter, w.colour_jitter + 1, size=3)
            v["colour"] = np.clip(np.array(w.palette[label]) + jitter, 0, 255).astype(np.uint8)
        vehicles.append(v)
    return vehicles


def synthetic_clip(
    seed: int,
    num_frames: int = 25,
    height: int = 320,
    width: int = 512,
    fps: float = 10.0,
    world: str | World = "default",
) -> Clip:
    w = get_world(world) if isinstance(world, str) else world
    rng = np.random.default_rng(seed)
    H, W = height, width
    f = w.focal * W  # focal length in pixels
    y_h = w.horizon * H  # horizon row
    cam_h = w.cam_h
    ego_speed = rng.uniform(*w.ego_speed)
    dt = 1.0 / fps
    vehicles = _vehicles(rng, w)

    sky_top = np.array(w.sky_top, np.float32)
    sky_bottom = np.array(w.sky_bottom, np.float32)
    grass = rng.uniform(*w.ground_gain) * np.array(w.ground, np.float32)
    asphalt = rng.uniform(*w.asphalt_gain) * np.array(w.asphalt, np.float32)

    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(W, dtype=np.float32)[None, :] + 0.5
    below = rows > y_h
    Z = np.where(
        below, f * cam_h / np.maximum(rows - y_h, 1e-3), 1e9
    )  # depth of each ground pixel (far above the horizon)
    X = (cols - W / 2) * Z / f  # lateral offset

    frames = np.empty((num_frames, H, W, 3), np.uint8)
    boxes, labels, tracks = [], [], []
    for j in range(num_frames):
        t = j * dt
        img = np.empty((H, W, 3), np.float32)
        sky_w = np.clip(rows / max(y_h, 1.0), 0, 1)[..., None]
        img[:] = (1 - sky_w) * sky_top + sky_w * sky_bottom
        ground = np.broadcast_to(below, (H, W))
        img[ground] = grass
        road = ground & (np.abs(X) < w.road_half_width)
        img[road] = asphalt
        # dashes move towards the camera as the ego car drives forward
        phase = (Z + ego_speed * t) % w.dash_period < w.dash_len
        for xm in w.lane_lines:
            img[road & (np.abs(X - xm) < 0.1) & phase] = w.marking
        img[road & (np.abs(np.abs(X) - (w.road_half_width - 0.2)) < 0.1)] = w.marking  # solid edges

        frame_boxes, frame_labels, frame_tracks = [], [], []
        # painter's order: far vehicles first
        for v in sorted(vehicles, key=lambda v: -(v["Z0"] + v["v_rel"] * t)):
            z = v["Z0"] + v["v_rel"] * t
            if z < w.min_depth:
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
            img[r0 + max(1, (r1 - r0) // 8) : wr1, c0 + max(1, (c1 - c0) // 8) : c1 - max(1, (c1 - c0) // 8)] = (
                40,
                50,
                60,
            )
            img[max(r1 - max(1, (r1 - r0) // 10), r0) : r1, c0:c1] = (25, 25, 25)
            frame_boxes.append(bx)
            frame_labels.append(v["label"])
            frame_tracks.append(v["track_id"])
        frames[j] = np.clip(img, 0, 255).astype(np.uint8)
        boxes.append(np.array(frame_boxes, np.float32).reshape(-1, 4))
        labels.append(np.array(frame_labels, np.int64))
        tracks.append(np.array(frame_tracks, np.int64))

    name = "synthetic" if w is WORLDS["default"] else f"synthetic-{world if isinstance(world, str) else 'custom'}"
    return Clip(
        frames=frames,
        boxes=boxes,
        labels=labels,
        track_ids=tracks,
        meta=dict(dataset=name, scene=f"seed{seed}", seed=seed, fps=fps, frame_ids=list(range(num_frames))),
    )


class SyntheticDataset:
    """`num_clips` synthetic clips of one world; clip i uses seed `seed + i` (train and test use
    disjoint seeds)."""

    def __init__(
        self,
        num_clips: int = 8,
        num_frames: int = 25,
        height: int = 320,
        width: int = 512,
        seed: int = 0,
        fps: float = 10.0,
        world: str = "default",
    ):
        self.num_clips, self.num_frames, self.height, self.width = num_clips, num_frames, height, width
        self.seed, self.fps, self.world = seed, fps, world
        get_world(world)  # an unknown name fails here, not at the first clip

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, i: int) -> Clip:
        if not 0 <= i < self.num_clips:
            raise IndexError(i)
        return synthetic_clip(self.seed + i, self.num_frames, self.height, self.width, self.fps, self.world)
