"""The backbone interface: what the trainer, the LSA objective, generation and the stages need from a
video diffusion model, so that none of them changes per backbone (docs/backbones.md).

A backbone owns its networks, its noise parameterisation (EDM for SVD, rectified flow for LTX-Video),
the x0 prediction, its conditioning, the decode of a predicted clean latent WITH gradients, how the
decoded frames line up with the video frames (and so with the boxes of the mask), the export of the
trained network and generation through its diffusers pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class DiffusionTerms:
    """One diffusion step on a batch: the loss L_diff, the predicted clean latent z0_hat (the latent
    layout of the backbone, graph kept) and the noise level per video."""

    loss: torch.Tensor
    z0_hat: torch.Tensor
    sigma: torch.Tensor


class Backbone(Protocol):
    name: str  # "svd", "ltx"
    export_name: str  # folder under the run the trained network is exported to ("unet", "transformer")

    # ---- networks
    def trainable(self) -> torch.nn.Module:
        """The network that trains (before any adapter)."""

    def frozen(self) -> Sequence[torch.nn.Module]:
        """The frozen networks (VAE, image / text encoders) the trainer moves to the device and dtype."""

    # ---- one training step
    def check_frames(self, num_frames: int) -> None:
        """Raise a ValueError naming the config key when clips of `num_frames` frames cannot be trained."""

    def encode(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """frames [B,T,3,H,W] in [-1,1] -> clean latents z0 (no gradients), the backbone's layout."""

    def condition(self, frames: torch.Tensor, z0: torch.Tensor, generator: torch.Generator, train: bool = True) -> Any:
        """The conditioning of a batch (image, text, micro-conditions), opaque to the trainer."""

    def diffusion_loss(
        self, model: torch.nn.Module, z0: torch.Tensor, cond: Any, generator: torch.Generator
    ) -> DiffusionTerms:
        """Draw a noise level and noise, run `model`, return L_diff and z0_hat."""

    def decode(self, z0_hat: torch.Tensor, loss_cfg) -> torch.Tensor:
        """z0_hat -> x_hat [B,T,3,H,W] in [-1,1] through the frozen VAE decoder, keeping the graph.
        Decoded frame j is video frame j (frames_of_latent says which frames each latent frame covers)."""

    def frames_of_latent(self, k: int) -> list[int]:
        """The video frames latent frame k encodes (the boxes of those frames belong to it)."""

    # ---- export and generation
    def export(self, model: torch.nn.Module, folder: Path) -> int:
        """Save the trained network (adapters merged) as a diffusers folder; returns its parameter count."""

    def pipeline(self, trained: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """The backbone's diffusers pipeline, with an exported network folder swapped in when given."""

    def generate(self, pipe, frame0: np.ndarray, gen_cfg, generator: torch.Generator) -> np.ndarray:
        """One video from a first frame (uint8 [H,W,3]) -> uint8 [T,H,W,3]."""
