"""Flow-matching maths (trainers/flow.py) against diffusers' own FlowMatchEulerDiscreteScheduler,
configured as the LTX-Video release (as tests/test_trainer_edm.py checks the EDM maths against
EulerDiscreteScheduler)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ltx.pipeline_ltx_image2video import calculate_shift

from trainers import flow
from trainers.backbones.ltx import LTX_SCHEDULER_CONFIG

STEPS = 20
SEQ_LEN = 4 * 10 * 16  # latent tokens of a 25 x 320 x 512 video through LTX's 8 x 32 x 32 VAE


def _scheduler():
    s = FlowMatchEulerDiscreteScheduler.from_config(LTX_SCHEDULER_CONFIG)
    mu = flow.dynamic_shift(SEQ_LEN, s.config)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)  # as LTXImageToVideoPipeline
    return s


def test_dynamic_shift_is_the_pipelines():
    cfg = FlowMatchEulerDiscreteScheduler.from_config(LTX_SCHEDULER_CONFIG).config
    for n in (64, 640, 1024, 6000):
        assert flow.dynamic_shift(n, cfg) == pytest.approx(
            calculate_shift(n, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
        )


def test_time_shift_is_the_schedulers():
    s = FlowMatchEulerDiscreteScheduler.from_config(LTX_SCHEDULER_CONFIG)
    sigma = torch.linspace(0.01, 0.99, 17, dtype=torch.float64)
    for mu in (0.3, 1.7):
        assert torch.allclose(flow.time_shift(mu, sigma), s.time_shift(mu, 1.0, sigma))


@pytest.mark.parametrize("i", [0, 5, 13, STEPS - 2])
def test_noising_timestep_and_x0_match_the_scheduler(i):
    sched = _scheduler()
    sigma, t = sched.sigmas[i], sched.timesteps[i]
    sigma_next = sched.sigmas[i + 1]
    torch.manual_seed(i)
    z0, eps, v_hat = torch.randn(3, 1, 8, 3, 4, 5).unbind(0)
    # the timestep the transformer receives
    assert torch.allclose(flow.timestep(sigma, sched.config.num_train_timesteps), t, rtol=1e-6)
    # forward process
    x_t = flow.noisy(z0, eps, sigma.reshape(1))
    assert torch.allclose(x_t, sched.scale_noise(z0, t.reshape(1), eps), atol=1e-6)
    # the true velocity takes the Euler step exactly onto the next noise level of the same (z0, eps)
    s = _scheduler()
    s._step_index = i
    nxt = s.step(flow.target(z0, eps), t, x_t).prev_sample
    assert torch.allclose(nxt, flow.noisy(z0, eps, sigma_next.reshape(1)), atol=1e-5)
    assert torch.allclose(flow.denoise(flow.target(z0, eps), x_t, sigma.reshape(1)), z0, atol=1e-5)
    # any predicted velocity: the scheduler's step is the interpolation between x_t and our z0_hat
    s = _scheduler()
    s._step_index = i
    nxt = s.step(v_hat, t, x_t).prev_sample
    z0_hat = flow.denoise(v_hat, x_t, sigma.reshape(1))
    assert torch.allclose(nxt, z0_hat + (sigma_next / sigma) * (x_t - z0_hat), atol=1e-5)


def test_last_step_lands_on_x0_hat():
    sched = _scheduler()
    i = STEPS - 1
    assert float(sched.sigmas[i + 1]) == 0.0
    torch.manual_seed(0)
    x_t, v_hat = torch.randn(2, 1, 8, 2, 3, 3).unbind(0)
    sched._step_index = i
    out = sched.step(v_hat, sched.timesteps[i], x_t).prev_sample
    assert torch.allclose(out, flow.denoise(v_hat, x_t, sched.sigmas[i].reshape(1)), atol=1e-6)


def test_sigma_sampler():
    g = torch.Generator().manual_seed(0)
    s = flow.FlowSigmaSampler("logit_normal", 0.0, 1.0)(20000, g)
    logit = (s / (1 - s)).log()
    assert abs(logit.mean().item()) < 0.05 and abs(logit.std().item() - 1.0) < 0.05
    u = flow.FlowSigmaSampler("uniform")(20000, g)
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02
    shifted = flow.FlowSigmaSampler("uniform", mu=1.5)(20000, g)
    assert shifted.mean() > 0.6  # a positive shift moves training towards high noise
    with pytest.raises(ValueError, match="model.flow.sigma_dist"):
        flow.FlowSigmaSampler("lognormal")
