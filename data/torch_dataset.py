"""Clips as training tensors for a torch DataLoader."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data.clip import Clip


class ClipTorchDataset(torch.utils.data.Dataset):
    """Item i: {"frames": float32 [T,3,H,W] in [-1,1], "boxes": T float32 tensors [n_j,4] (xyxy
    pixels), "labels": T int64 tensors [n_j] (COCO ids), "index": i}."""

    def __init__(self, clips: Sequence[Clip]):
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2)
        return {
            "frames": frames.float().div_(127.5).sub_(1.0),
            "boxes": [torch.from_numpy(np.asarray(b, np.float32).reshape(-1, 4)) for b in clip.boxes],
            "labels": [torch.from_numpy(np.asarray(lab, np.int64).reshape(-1)) for lab in clip.labels],
            "index": int(i),
        }


def collate_clips(batch: list[dict]) -> dict:
    """Stack frames to [B,T,3,H,W]; boxes and labels stay lists (per sample, per frame) because
    the number of boxes varies; index becomes an int64 tensor [B]."""
    shapes = {tuple(b["frames"].shape) for b in batch}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch clips of different shapes {sorted(shapes)}; check data.height/width/clip_len")
    return {
        "frames": torch.stack([b["frames"] for b in batch]),
        "boxes": [b["boxes"] for b in batch],
        "labels": [b["labels"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.int64),
    }
