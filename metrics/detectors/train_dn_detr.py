"""Train the DN-DETR inference network (transformers' DabDetrForObjectDetection) on clips with exact boxes.

The mini profile's second detector: the network class the suite scores with
(metrics/detectors/dn_detr.py), built small (`mini_config`) and trained from scratch with
transformers' own DETR set loss (Hungarian matching, focal class loss, L1 + GIoU box losses).
Frames go through the detector's own test-time preprocessing (`Preprocess`: resize to
`short_edge_length`, normalise), so training and scoring see the same input. The result is a
`save_pretrained` folder that `det.detector.weights` accepts as it is.

DN-DETR's denoising queries are a training-time device of detrex that transformers' DabDetr has
no head for; this trains the plain DAB-DETR objective on the same network (docs/mini.md says so).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.atomic import save_pretrained_atomic
from data.clip import Clip
from data.device import keeps_torch_threads
from metrics.detectors.dn_detr import Preprocess


def mini_config(
    hidden_size: int = 64,
    layers: int = 3,
    num_queries: int = 16,
    hidden_sizes=(16, 32, 64, 128),
    out_stage: str = "stage3",
):
    """A small DN-DETR-shaped DabDetrConfig: ResNet bottleneck backbone read at `out_stage`
    (stage3 = stride 16: a 128 px short edge gives an 8 x 12 feature map; stage2 = stride 8, 16 x 24,
    which the mini profile uses: its vehicles are 7-30 px), `layers` encoder and decoder layers, one
    shared pattern (DN-DETR's content query), the 80 COCO labels."""
    from transformers import DabDetrConfig, ResNetConfig

    from data.coco import COCO_NAMES

    backbone = ResNetConfig(
        embedding_size=hidden_sizes[0],
        hidden_sizes=list(hidden_sizes),
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        out_features=[out_stage],
    )
    return DabDetrConfig(
        backbone_config=backbone,
        hidden_size=hidden_size,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_ffn_dim=2 * hidden_size,
        decoder_ffn_dim=2 * hidden_size,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        num_queries=num_queries,
        num_patterns=1,
        auxiliary_loss=True,
        dropout=0.0,
        id2label=dict(enumerate(COCO_NAMES)),
        label2id={n: i for i, n in enumerate(COCO_NAMES)},
    )


def _targets(clip_boxes: Sequence[np.ndarray], clip_labels: Sequence[np.ndarray], hw: tuple[int, int]):
    """Per frame {'class_labels', 'boxes' (cx, cy, w, h normalised)}: the DETR loss's targets."""
    H, W = hw
    out = []
    for b, lab in zip(clip_boxes, clip_labels):
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        cxcywh = torch.stack(
            [
                (b[:, 0] + b[:, 2]) / 2 / W,
                (b[:, 1] + b[:, 3]) / 2 / H,
                (b[:, 2] - b[:, 0]) / W,
                (b[:, 3] - b[:, 1]) / H,
            ],
            -1,
        )
        out.append({"class_labels": torch.as_tensor(lab, dtype=torch.long), "boxes": cxcywh})
    return out


def _flip(frames: np.ndarray, targets: list[dict], flip: np.ndarray):
    """Horizontal flip of the chosen frames and their boxes (the only augmentation)."""
    frames = frames.copy()
    frames[flip] = frames[flip][:, :, ::-1]
    for i in np.flatnonzero(flip):
        b = targets[i]["boxes"].clone()
        b[:, 0] = 1.0 - b[:, 0]
        targets[i] = {"class_labels": targets[i]["class_labels"], "boxes": b}
    return frames, targets


class TrainableBatchNorms:
    """DabDetr's backbone BatchNorms as trainable `nn.BatchNorm2d` while training, frozen back on exit.

    transformers builds every DETR backbone with `DabDetrFrozenBatchNorm2d` (fixed statistics and
    affine), which is right for DETR's ImageNet-pretrained ResNet. From scratch it leaves the ResNet
    with no normalisation at all: in the mini world that trained unstably and often collapsed to
    image-independent boxes. So the frozen layers are swapped for `nn.BatchNorm2d` (batch statistics,
    learned affine) for training, and on exit each one's weight, bias and running statistics are
    written into the frozen layer's buffers (the same eps, 1e-5): the saved folder is a plain
    DabDetr checkpoint whose backbone computes exactly BatchNorm's eval mode."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.swapped = model, []

    def __enter__(self):
        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if type(child).__name__ == "DabDetrFrozenBatchNorm2d":
                    bn = torch.nn.BatchNorm2d(child.weight.numel(), eps=1e-5)
                    setattr(parent, name, bn)
                    self.swapped.append((parent, name, child, bn))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for parent, name, frozen, bn in self.swapped:
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(bn, key))
                setattr(parent, name, frozen)
        self.swapped = []
        return False


def train_dn_detr(
    out: str | Path,
    train_clips: Sequence[Clip],
    *,
    steps: int = 2000,
    batch_size: int = 8,
    lr: float = 2e-4,
    weight_decay: float = 1e-4,
    grad_clip: float = 0.1,
    seed: int = 0,
    short_edge_length: int = 128,
    max_size: int = 1333,
    config: dict | None = None,
    train_backbone_bn: bool = True,
    threads: int | None = None,
    log_every: int = 100,
    log=print,
) -> Path:
    """Train from scratch for `steps` AdamW steps (cosine decay) on every frame of `train_clips`;
    save the model folder at `out` with `train_log.json` (loss every `log_every` steps, seconds).
    `train_backbone_bn`: train the backbone's BatchNorms (`TrainableBatchNorms`); False keeps
    transformers' frozen ones (no normalisation from scratch). `threads`: torch's thread count while
    training (restored after), None = as it is; the thread count changes the order of float sums,
    so pinning it makes the weights the same on any machine."""
    from transformers import DabDetrForObjectDetection

    frames = np.concatenate([c.frames for c in train_clips])
    targets = [t for c in train_clips for t in _targets(c.boxes, c.labels, c.hw)]
    pre = Preprocess(short_edge_length, max_size, "bilinear", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DabDetrForObjectDetection(mini_config(**(config or {})))
    norms = TrainableBatchNorms(model) if train_backbone_bn else contextlib.nullcontext()
    with keeps_torch_threads(threads), norms:
        model.train()
        history = _fit(model, frames, targets, pre, rng, steps, batch_size, lr, weight_decay, grad_clip, log_every, log)
    model.eval()
    return save_pretrained_atomic(model, Path(out), extra_files={"train_log.json": json.dumps(history, indent=1)})


def _fit(model, frames, targets, pre, rng, steps, batch_size, lr, weight_decay, grad_clip, log_every, log) -> list:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    history, start, running = [], time.time(), []
    for step in range(1, steps + 1):
        idx = rng.choice(len(frames), size=min(batch_size, len(frames)), replace=False)
        batch, tgt = _flip(frames[idx], [targets[i] for i in idx], rng.random(len(idx)) < 0.5)
        loss = model(pixel_values=pre(batch), labels=tgt).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append({"step": step, "loss": float(np.mean(running)), "seconds": time.time() - start})
            log(f"dn_detr step {step}/{steps} loss {history[-1]['loss']:.4f} ({history[-1]['seconds']:.0f} s)")
            running = []
    return history
