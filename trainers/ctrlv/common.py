"""What both Ctrl-V stages share: variants, config checks, and rendering a batch's boxes."""

from __future__ import annotations

import numpy as np
import torch

from trainers.ctrlv.render import Renderer, identity_slots, to_model_range
from trainers.loop import Trainer

STAGES = ("bbox", "box2video")


def variant_spec(ctrlv_cfg) -> tuple[int, bool]:
    """(number of leading frames whose boxes are given, whether the last frame's are given)."""
    name = str(ctrlv_cfg.variant)
    if name not in ctrlv_cfg.variants:
        raise ValueError(f"ctrlv.variant={name!r}: valid are {sorted(ctrlv_cfg.variants)} (ctrlv.variants)")
    spec = ctrlv_cfg.variants[name]
    first, last = int(spec.first), bool(spec.last)
    if first < 1:
        raise ValueError(f"ctrlv.variants.{name}.first={first}: the first frame's boxes are always given")
    return first, last


def conditioning_frames(ctrlv_cfg, num_frames: int) -> list[int]:
    """Frame indices whose ground-truth boxes the BBox generator is given: 1-to-0 -> [0];
    1-to-1 -> [0, T-1]; 3-to-1 -> [0, 1, 2, T-1]."""
    first, last = variant_spec(ctrlv_cfg)
    need = first + int(last) + 1  # the given frames plus at least one to generate
    if num_frames < need:
        raise ValueError(
            f"ctrlv.variant={ctrlv_cfg.variant} gives the boxes of {first + int(last)} frames and needs "
            f"clips of at least {need} frames (data.clip_len / num_frames is {num_frames})"
        )
    return list(range(first)) + ([num_frames - 1] if last else [])


def check_stage_config(cfg, stage: str) -> None:
    if cfg.ctrlv.stage != stage:
        raise ValueError(f"ctrlv.stage={cfg.ctrlv.stage!r} but this trainer is the {stage!r} stage")
    if cfg.schedule.feat_from_epoch is not None:
        raise ValueError(
            f"schedule={cfg.schedule.name}: the Ctrl-V stages train with the diffusion loss only (schedule=diffusion)"
        )
    variant_spec(cfg.ctrlv)
    if stage == "bbox" and cfg.data.get("clip_len") is not None:
        conditioning_frames(cfg.ctrlv, int(cfg.data.clip_len))  # fail before any model is loaded


class CtrlVTrainer(Trainer):
    """The shared Trainer (loop, checkpoints, resume, export) with box rendering for the Ctrl-V stages."""

    stage = ""
    validates = False  # its videos need the box conditioning (trainers/ctrlv/pipeline.py), not the SVD pipeline

    def __init__(self, cfg):
        check_stage_config(cfg, self.stage)
        self.renderer = Renderer.from_cfg(cfg.ctrlv)
        super().__init__(cfg)

    def batch_tracks(self, batch) -> list[list[np.ndarray]]:
        """Per sample, per frame track ids, looked up in the clips by the batch's indices (the torch
        dataset does not carry them)."""
        out = []
        for b, i in enumerate(batch["index"].tolist()):
            tracks = self.dataset.clips[i].track_ids
            for j, (t, boxes) in enumerate(zip(tracks, batch["boxes"][b])):
                if len(t) != len(boxes):
                    raise ValueError(f"training clip {i} frame {j}: {len(boxes)} boxes but {len(t)} track ids")
            out.append(tracks)
        return out

    def render_batch(self, batch, priority_frames=()) -> torch.Tensor:
        """The batch's ground-truth boxes as box frames: [B,T,3,H,W] in [-1,1]."""
        H, W = batch["frames"].shape[-2:]
        videos = []
        for b, tracks in enumerate(self.batch_tracks(batch)):
            boxes = [x.numpy() for x in batch["boxes"][b]]
            labels = [x.numpy() for x in batch["labels"][b]]
            slots = identity_slots(tracks, priority_frames)
            videos.append(self.renderer.render(boxes, labels, slots, (H, W)))
        return to_model_range(np.stack(videos))
