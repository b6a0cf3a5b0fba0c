"""Box frames: per-frame 2D boxes drawn into RGB frames, and boxes read back from (generated) box frames.

How Ctrl-V draws them (its utils/plotting.py, 2D mode): on a black canvas each box is FILLED with a
colour of its track identity, blended 0.75 over the canvas, and outlined 2 px in a colour of its object
type. We do the same with three changes, all for reading boxes back unambiguously:
- identity colours come from a fixed palette (Ctrl-V draws random colours per track id, new each run):
  the k-th distinct track of a clip gets colour k (saturated hues, evenly spaced, neighbours far apart);
- the outline is a grey level per class (Ctrl-V: saturated type colours, which can equal an identity
  colour); it is drawn inside the box edge, so the box extent is exactly fill + outline;
- boxes are drawn largest first, so a small box inside a big one stays visible (Ctrl-V: label order).
Read-back: every pixel is matched to the nearest identity fill colour within a tolerance; the largest
connected region of each colour is that track's box (plus the outline width); the median grey of the
outline ring gives the class. Boxes thinner than 2 * outline_px + 1 px have no identity pixels.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Renderer:
    fill: np.ndarray  # [N,3] float, identity colours as drawn (fill_alpha x palette)
    outline_px: int
    class_grey: dict  # COCO class id -> grey level of its outline
    other_grey: int
    colour_tolerance: float
    min_pixels: int
    max_grey_chroma: float
    min_grey: float

    @classmethod
    def from_cfg(cls, ctrlv_cfg) -> Renderer:
        r, rb = ctrlv_cfg.render, ctrlv_cfg.readback
        n, step = int(r.palette_size), int(r.hue_step)
        if n < 1 or math.gcd(n, step) != 1:
            raise ValueError(
                f"ctrlv.render.hue_step={step} must be coprime with ctrlv.render.palette_size={n} "
                "(otherwise identity colours repeat within the palette)"
            )
        if not 0 < float(r.fill_alpha) <= 1:
            raise ValueError(f"ctrlv.render.fill_alpha={r.fill_alpha} must be in (0, 1]")
        palette = (
            np.array([colorsys.hsv_to_rgb(((k * step) % n) / n, float(r.saturation), float(r.value)) for k in range(n)])
            * 255.0
        )
        greys = {}
        for item in r.class_grey:
            label, grey = (int(v) for v in item)
            greys[label] = grey
        return cls(
            fill=np.round(float(r.fill_alpha) * palette),
            outline_px=int(r.outline_px),
            class_grey=greys,
            other_grey=int(r.other_grey),
            colour_tolerance=float(rb.colour_tolerance),
            min_pixels=int(rb.min_pixels),
            max_grey_chroma=float(rb.max_grey_chroma),
            min_grey=float(rb.min_grey),
        )

    @property
    def palette_size(self) -> int:
        return len(self.fill)

    # ------------------------------------------------------------------ drawing
    def render_frame(self, boxes, labels, slots, hw) -> np.ndarray:
        """One frame: boxes [n,4] xyxy pixels, labels [n], identity slots [n] -> uint8 [H,W,3]."""
        H, W = hw
        canvas = np.zeros((H, W, 3), np.uint8)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        o = self.outline_px
        for i in np.argsort(-area, kind="stable"):  # largest first: small boxes stay visible on top
            x1, y1, x2, y2 = pixel_box(boxes[i], H, W)
            if x2 <= x1 or y2 <= y1:
                continue
            canvas[y1:y2, x1:x2] = self.fill[int(slots[i]) % self.palette_size]
            if o > 0:
                g = self.class_grey.get(int(labels[i]), self.other_grey)
                canvas[y1 : min(y1 + o, y2), x1:x2] = g
                canvas[max(y2 - o, y1) : y2, x1:x2] = g
                canvas[y1:y2, x1 : min(x1 + o, x2)] = g
                canvas[y1:y2, max(x2 - o, x1) : x2] = g
        return canvas

    def render(self, boxes: Sequence, labels: Sequence, slots: Sequence, hw) -> np.ndarray:
        """Per-frame lists -> uint8 [T,H,W,3]."""
        return np.stack([self.render_frame(b, lab, s, hw) for b, lab, s in zip(boxes, labels, slots)])

    # ------------------------------------------------------------------ reading back
    def read_frame(self, frame: np.ndarray) -> dict:
        """uint8 [H,W,3] -> {"boxes": float32 [n,4], "slots": int64 [n], "labels": int64 [n]} (slot order)."""
        from scipy import ndimage

        img = frame.astype(np.float32)
        H, W = img.shape[:2]
        dist = np.linalg.norm(img[:, :, None, :] - self.fill[None, None].astype(np.float32), axis=-1)
        nearest = dist.argmin(-1)
        matched = dist.min(-1) < self.colour_tolerance
        boxes, slots, labels = [], [], []
        o = self.outline_px
        for k in np.unique(nearest[matched]):
            mask = matched & (nearest == k)
            if mask.sum() < self.min_pixels:
                continue
            # the largest connected region: stray pixels of this colour elsewhere do not stretch the box
            comp, n = ndimage.label(mask)
            if n > 1:
                sizes = ndimage.sum_labels(mask, comp, index=np.arange(1, n + 1))
                mask = comp == (1 + int(np.argmax(sizes)))
                if mask.sum() < self.min_pixels:
                    continue
            ys, xs = np.nonzero(mask)
            box = [max(xs.min() - o, 0), max(ys.min() - o, 0), min(xs.max() + 1 + o, W), min(ys.max() + 1 + o, H)]
            boxes.append(box)
            slots.append(int(k))
            labels.append(self._read_label(img, box, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
        return {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "slots": np.asarray(slots, np.int64),
            "labels": np.asarray(labels, np.int64),
        }

    def read(self, frames: np.ndarray) -> list[dict]:
        return [self.read_frame(f) for f in frames]

    def _read_label(self, img, box, inner) -> int:
        """Class from the median grey of the outline ring (box minus its filled interior); -1 if none."""
        if self.outline_px <= 0 or not self.class_grey:
            return -1
        x1, y1, x2, y2 = box
        ring = np.zeros(img.shape[:2], bool)
        ring[y1:y2, x1:x2] = True
        ring[inner[1] : inner[3], inner[0] : inner[2]] = False
        px = img[ring]
        grey = px[(px.max(1) - px.min(1) < self.max_grey_chroma) & (px.mean(1) > self.min_grey)]
        if len(grey) == 0:
            return -1
        level = float(np.median(grey.mean(1)))
        candidates = list(self.class_grey.items()) + [(-1, self.other_grey)]
        return int(min(candidates, key=lambda kv: abs(kv[1] - level))[0])


def pixel_box(box, H: int, W: int) -> tuple[int, int, int, int]:
    """xyxy float pixels -> integer [x1, x2) x [y1, y2) pixel ranges, clipped to the frame."""
    x1, y1, x2, y2 = (int(math.floor(float(v) + 0.5)) for v in box)
    return min(max(x1, 0), W), min(max(y1, 0), H), min(max(x2, 0), W), min(max(y2, 0), H)


def identity_slots(track_ids: Sequence, priority_frames: Sequence[int] = ()) -> list[np.ndarray]:
    """Identity colour slot of every box: the k-th distinct track of the clip gets slot k.

    Tracks are numbered in order of first appearance, visiting `priority_frames` first (the frames whose
    boxes the BBox generator is given), then all frames in time order, so a track's colour at training
    time is the one it gets at inference, where only the given frames are known. Unknown ids (-1) get a
    fresh slot per box.
    """
    order = list(priority_frames) + [j for j in range(len(track_ids)) if j not in set(priority_frames)]
    slot_of: dict[int, int] = {}
    slots = [np.zeros(len(np.asarray(t).reshape(-1)), np.int64) for t in track_ids]
    next_slot = 0
    for j in order:
        for i, tid in enumerate(np.asarray(track_ids[j]).reshape(-1)):
            tid = int(tid)
            if tid < 0:
                slots[j][i] = next_slot
                next_slot += 1
                continue
            if tid not in slot_of:
                slot_of[tid] = next_slot
                next_slot += 1
            slots[j][i] = slot_of[tid]
    return slots


def to_model_range(frames_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1] (the VAE's input range)."""
    x = torch.from_numpy(np.ascontiguousarray(frames_uint8)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


@torch.no_grad()
def encode_box_latents(vae, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Box frames [B,T,3,H,W] in [-1,1] -> unscaled VAE latent modes [B,T,4,h,w].

    As Ctrl-V encodes its box frames (and as SVD encodes its conditioning frame): `latent_dist.mode()`,
    not multiplied by the latent scale factor; `chunk` frames per encoder call bound the memory.
    """
    B, T = frames.shape[:2]
    flat = frames.flatten(0, 1).to(device=vae.device, dtype=vae.dtype)
    out = torch.cat([vae.encode(flat[s : s + chunk]).latent_dist.mode() for s in range(0, len(flat), chunk)])
    return out.view(B, T, *out.shape[1:])
