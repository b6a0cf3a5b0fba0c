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


def test_loss_weight_and_identity():
    sigma = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(edm.loss_weight(sigma), (1 + sigma ** 2) / sigma ** 2)
    # c_skip^2 + c_out^2 * ... : EDM's unit-variance property c_skip + c_out^2 = 1 for sigma_data = 1
    assert torch.allclose(edm.c_skip(sigma) + edm.c_out(sigma) ** 2, torch.ones(3))


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
