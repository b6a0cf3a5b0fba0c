"""EDM maths against diffusers' own EulerDiscreteScheduler (SVD config)."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from trainers import edm
from trainers.models import SVD_SCHEDULER_CONFIG


def _scheduler(steps=50):
    s = EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("i", [0, 7, 25, 49])
def test_preconditioning_matches_euler_scheduler(i):
    sched = _scheduler()
    sigma, t = sched.sigmas[i], sched.timesteps[i]
    torch.manual_seed(i)
    x = torch.randn(1, 3, 4, 5, 6)
    F = torch.randn_like(x)
    # c_noise is the continuous timestep the pipeline feeds the U-Net
    assert torch.allclose(edm.c_noise(sigma), t.float(), rtol=1e-5, atol=1e-6)
    # model input scaling
    assert torch.allclose(sched.scale_model_input(x, t), edm.c_in(sigma) * x, rtol=1e-5, atol=1e-6)
    # denoised estimate (v-prediction) = the scheduler's pred_original_sample
    sched2 = _scheduler()
    sched2._step_index = i
    out = sched2.step(F, t, x).pred_original_sample
    assert torch.allclose(out, edm.denoise(F, x, sigma.reshape(1)), rtol=1e-5, atol=1e-5)


def test_loss_weight_at_known_sigmas():
    """w(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM, sigma_data = 1), by hand."""
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0])
    expected = torch.tensor([101.0, 5.0, 2.0, 1.25, 1.01])  # 1.01/0.01, 1.25/0.25, 2/1, 5/4, 101/100
    torch.testing.assert_close(edm.loss_weight(sigma), expected, rtol=1e-6, atol=0)
    # EDM's unit-variance property c_skip + c_out^2 = 1 for sigma_data = 1: 1/(1+s^2) + s^2/(1+s^2)
    torch.testing.assert_close(edm.c_skip(sigma) + edm.c_out(sigma) ** 2, torch.ones(5))


def test_loss_weight_is_snr_plus_one_of_diffusers():
    """In x0 space the v-prediction loss weighs 1 + SNR(t) (SNR from diffusers' compute_snr)."""
    from diffusers.training_utils import compute_snr

    sched = EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG)
    t = torch.tensor([0, 99, 499, 999])
    sigma = edm.scheduler_sigmas(sched)[t]
    torch.testing.assert_close(edm.loss_weight(sigma), 1 + compute_snr(sched, t), rtol=1e-4, atol=0)


@pytest.mark.parametrize("t", [10, 300, 900])
def test_weighted_x0_loss_equals_v_prediction_mse(t):
    """w(sigma) ||z0_hat - z0||^2 is the plain MSE of the U-Net output against diffusers' v target
    (DDPMScheduler.get_velocity on the SVD betas): L_diff trains what SVD's v-prediction trains."""
    from diffusers import DDPMScheduler

    cfg = {k: SVD_SCHEDULER_CONFIG[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    ddpm = DDPMScheduler(**cfg, prediction_type="v_prediction")
    abar = ddpm.alphas_cumprod[t].double()
    sigma = ((1 - abar) / abar).sqrt().reshape(1)
    g = torch.Generator().manual_seed(t)
    z0, eps, F = (torch.randn(1, 2, 4, 3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = z0 + sigma.view(1, 1, 1, 1, 1) * eps  # EDM's noised latent
    v = ddpm.get_velocity(z0, eps, torch.tensor([t])).double()
    ours = edm.loss_weight(sigma) * ((edm.denoise(F, x_t, sigma) - z0) ** 2).mean()
    torch.testing.assert_close(ours, ((F - v) ** 2).mean().reshape(1), rtol=1e-6, atol=1e-9)


def test_sigma_samplers():
    g = torch.Generator().manual_seed(0)
    s = edm.SigmaSampler("lognormal", 0.7, 1.6)(20000, g)
    assert abs(s.log().mean().item() - 0.7) < 0.05 and abs(s.log().std().item() - 1.6) < 0.05
    sigmas = edm.scheduler_sigmas(EulerDiscreteScheduler.from_config(SVD_SCHEDULER_CONFIG))
    assert len(sigmas) == 1000 and 0.02 < sigmas.min() < 0.04 and 14 < sigmas.max() < 15
    u = edm.SigmaSampler("uniform_index", sigmas=sigmas)(500, g)
    assert all(bool((sigmas == v).any()) for v in u[:20])
    with pytest.raises(ValueError, match="edm.sigma_dist"):
        edm.SigmaSampler("karras")
