"""Rectified-flow (flow-matching) maths of the flow backbones, in one place (docs/backbones.md).

The counterpart of trainers/edm.py for a model trained with diffusers' FlowMatchEulerDiscreteScheduler:

x_t = (1 - sigma) z0 + sigma eps                   (the scheduler's `scale_noise`)
v   = eps - z0                                     (the training target: the velocity)
z0_hat = x_t - sigma v_hat                         (x0 prediction: one Euler step to sigma = 0)
t = sigma * num_train_timesteps                    (the `timestep` the transformer receives)
L_diff = || v_hat - v ||^2                         (uniform weighting over noise levels)

Training noise levels: sigma = sigmoid(n), n ~ N(logit_mean, logit_std^2) (SD3's logit-normal), or
uniform, then optionally shifted with the scheduler's exponential time shift
sigma' = e^mu / (e^mu + 1/sigma - 1), where mu is the shift the pipeline uses at inference for the
same latent sequence length (`shift: auto`) or a fixed number.
"""

from __future__ import annotations

import math

import torch

SIGMA_DISTS = ("logit_normal", "uniform")


def noisy(z0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = _bcast(sigma, z0)
    return (1.0 - s) * z0 + s * eps


def target(z0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The velocity d x_t / d sigma that the transformer predicts."""
    return eps - z0


def denoise(v_hat: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z0_hat from the predicted velocity; sigma broadcasts over the trailing dims."""
    return x_t - _bcast(sigma, x_t) * v_hat


def timestep(sigma: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    return sigma * num_train_timesteps


def time_shift(mu: float, sigma: torch.Tensor) -> torch.Tensor:
    """The exponential time shift of FlowMatchEulerDiscreteScheduler (use_dynamic_shifting)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigma - 1.0))


def dynamic_shift(seq_len: int, scheduler_config) -> float:
    """mu for a latent sequence of `seq_len` tokens, as the LTX pipelines compute it (calculate_shift)."""
    base_len = scheduler_config.get("base_image_seq_len", 256)
    max_len = scheduler_config.get("max_image_seq_len", 4096)
    base_shift = scheduler_config.get("base_shift", 0.5)
    max_shift = scheduler_config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * m + base_shift - m * base_len


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


class FlowSigmaSampler:
    """Training noise levels in (0, 1): logit-normal or uniform, then shifted by mu (None: no shift)."""

    def __init__(
        self,
        dist: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mu: float | None = None,
        eps: float = 1e-5,
    ):
        if dist not in SIGMA_DISTS:
            raise ValueError(f"model.flow.sigma_dist={dist!r}: valid are {', '.join(SIGMA_DISTS)}")
        self.dist, self.logit_mean, self.logit_std, self.mu, self.eps = dist, logit_mean, logit_std, mu, eps

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.dist == "logit_normal":
            sigma = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator))
        else:
            sigma = torch.rand(n, generator=generator)
        if self.mu is not None:
            sigma = time_shift(self.mu, sigma)
        # sigma = 0 makes z0_hat exact and the step pointless; sigma = 1 is pure noise
        return sigma.clamp(self.eps, 1.0 - self.eps)
