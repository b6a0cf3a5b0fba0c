"""Build a dataset of `Clip`s from the `data` config group (configs/data/*.yaml)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from data.cli import InputError
from data.clip import Clip

_BUILDERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        _BUILDERS[name] = fn
        return fn

    return deco


def build_dataset(cfg, split: str) -> Sequence[Clip]:
    """`cfg` is the `data` config node; `split` is 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = cfg.name
    if name not in _BUILDERS:
        raise InputError(f"data.name={name!r} is unknown; valid: {sorted(_BUILDERS)}")
    return with_box_source(cfg, _BUILDERS[name](cfg, split))


def with_box_source(cfg, dataset: Sequence[Clip]) -> Sequence[Clip]:
    """data.boxes: `labels` keeps the dataset's boxes; `detector` replaces them by pseudo-labels."""
    source = cfg.get("boxes", "labels")
    if source == "labels":
        return dataset
    if source == "detector":
        from data.pseudo_boxes import PseudoBoxes

        return PseudoBoxes.from_config(dataset, cfg)
    raise InputError(f"data.boxes={source!r} is unknown; valid: labels, detector")


@register("synthetic")
def _synthetic(cfg, split):
    from data.synthetic import SyntheticDataset

    s = cfg[split]
    return SyntheticDataset(
        num_clips=s.num_clips,
        num_frames=cfg.clip_len,
        height=cfg.height,
        width=cfg.width,
        seed=s.seed,
        fps=cfg.fps,
        world=cfg.get("world", "default"),
    )


@register("kitti")
def _kitti(cfg, split):
    from data.kitti import KittiTracking

    return KittiTracking(cfg, split)


@register("nuscenes")
def _nuscenes(cfg, split):
    from data.nuscenes import NuScenesClips

    return NuScenesClips(cfg, split)


@register("folder")
def _folder(cfg, split):
    from data.folder import VideoFolder

    return VideoFolder(cfg, split)
