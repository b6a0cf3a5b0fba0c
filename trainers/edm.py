"""EDM / v-prediction preconditioning of SVD, in one place (docs/trainer.md).

x_t = z0 + sigma * eps;  F = U(c_in x_t, c_noise);  z0_hat = c_skip x_t + c_out F  (Eq. 1)
L_diff = w(sigma) ||z0_hat - z0||^2 with w(sigma) = (1 + sigma^2) / sigma^2      (Eq. 2)
"""

from __future__ import annotations

import torch


def c_in(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (sigma**2 + 1.0).sqrt()


def c_skip(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma / (sigma**2 + 1.0).sqrt()


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The `timestep` the SVD U-Net receives (sgm's VScalingWithEDMcNoise)."""
    return 0.25 * sigma.log()


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    return (1.0 + sigma**2) / sigma**2


def denoise(F: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """z0_hat from the U-Net output F (Eq. 1); sigma broadcasts over the trailing dims."""
    s = _bcast(sigma, x_t)
    return c_skip(s) * x_t + c_out(s) * F


def _bcast(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def scheduler_sigmas(scheduler) -> torch.Tensor:
    """The training sigmas of a DDPM-style scheduler: sqrt((1 - abar) / abar), ascending."""
    abar = scheduler.alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt().float()


class SigmaSampler:
    """Training noise levels: ln sigma ~ N(p_mean, p_std^2), or uniform by index (Ctrl-V)."""

    def __init__(
        self, dist: str = "lognormal", p_mean: float = 0.7, p_std: float = 1.6, sigmas: torch.Tensor | None = None
    ):
        if dist not in ("lognormal", "uniform_index"):
            raise ValueError(f"edm.sigma_dist={dist!r}: valid are 'lognormal', 'uniform_index'")
        if dist == "uniform_index" and sigmas is None:
            raise ValueError("edm.sigma_dist=uniform_index needs the scheduler's sigmas")
        self.dist, self.p_mean, self.p_std, self.sigmas = dist, p_mean, p_std, sigmas

    def __call__(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.dist == "lognormal":
            return (self.p_mean + self.p_std * torch.randn(n, generator=generator)).exp()
        idx = torch.randint(0, len(self.sigmas), (n,), generator=generator)
        return self.sigmas[idx]
