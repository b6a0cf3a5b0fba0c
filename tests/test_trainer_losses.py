"""DiffusionLoss and SemanticAlignmentLoss (Eq. 2-5) on tiny models and hand-made features."""

import numpy as np
import pytest
import torch

from trainers import edm
from trainers.decoder_speed import decode_with_grad
from trainers.losses import DiffusionLoss, DinoFeatures, SemanticAlignmentLoss
from trainers.models import build_tiny_dino, build_tiny_svd
from trainers.objective import objective_weights, select_frames


class FakeEncoder:
    """Patch 'features' = the mean pixel value of each 10x10 patch (d=1), on a 2x3 grid of a 20x30 frame."""

    def __call__(self, x):
        N = x.shape[0]
        f = x.mean(1).reshape(N, 2, 10, 3, 10).mean((2, 4)).reshape(N, 6, 1)
        return f, (2, 3)


def test_feature_loss_hand_computed_each_variant():
    x0 = torch.zeros(1, 2, 3, 20, 30)
    x_hat = torch.zeros_like(x0)
    x_hat[0, 0, :, :10, :10] = 1.0  # frame 0: patch (0,0) differs by 1
    x_hat[0, 1, :, 10:, 20:] = 0.5  # frame 1: patch (1,2) differs by 0.5
    boxes = [[np.array([[0, 0, 5, 5]]), np.zeros((0, 4))]]  # box covers patch (0,0) in frame 0 only
    n = 2 * 6 * 1  # frames x patches x channels
    expect = {
        "global": (1.0 + 0.25) / n,
        "box": (10**2 * 1.0 + 0) / n,  # frame 1 has no box: masked out entirely
        "hybrid": (10**2 * 1.0 + 0.25) / n,
    }  # alpha multiplies before squaring
    for variant, value in expect.items():
        loss = SemanticAlignmentLoss(FakeEncoder(), variant, alpha=10)(x_hat, x0, boxes)
        assert loss.item() == pytest.approx(value, rel=1e-6), variant


def test_real_side_has_no_grad_and_generated_side_has():
    dino = DinoFeatures(build_tiny_dino(), size="auto")
    x0 = (torch.rand(1, 2, 3, 28, 42) * 2 - 1).requires_grad_(True)
    x_hat = (torch.rand(1, 2, 3, 28, 42) * 2 - 1).requires_grad_(True)
    loss = SemanticAlignmentLoss(dino, "hybrid", 10)(x_hat, x0, [[np.array([[0, 0, 10, 10]])] * 2])
    loss.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert x0.grad is None or x0.grad.abs().sum() == 0


def test_dino_input_size_auto():
    dino = DinoFeatures(build_tiny_dino())
    assert dino.input_size(320, 512) == (322, 518)  # 23 x 37 patches (docs/perf.md)
    feats, grid = dino(torch.zeros(2, 3, 64, 96))
    assert grid == (5, 7) and feats.shape == (2, 35, 32)


def test_decode_chunked_and_checkpointed_agree():
    vae = build_tiny_svd()["vae"].requires_grad_(False)
    z = torch.randn(1, 4, 4, 8, 12, requires_grad=True)
    grads, outs = [], []
    for chunk, ckpt in [(4, False), (2, False), (2, True)]:
        z.grad = None
        x = decode_with_grad(vae, z, 0.18215, chunk=chunk, use_checkpoint=ckpt)
        assert x.shape == (1, 4, 3, 64, 96)
        x.square().mean().backward()
        outs.append(x.detach())
        grads.append(z.grad.clone())
    # chunking changes the temporal decoder's context (as in the SVD pipeline), checkpointing must not
    assert torch.allclose(outs[1], outs[2], atol=1e-6) and torch.allclose(grads[1], grads[2], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_channels_last_decoder_gives_the_same_frames_and_gradients():
    from trainers.decoder_speed import set_channels_last

    vae = build_tiny_svd()["vae"].requires_grad_(False)
    z = torch.randn(1, 3, 4, 8, 12, requires_grad=True)
    outs, grads = [], []
    for on in (False, True, False):
        n = set_channels_last(vae.decoder, on)
        conv = vae.decoder.conv_in.weight
        assert n > 3 and conv.is_contiguous(memory_format=torch.channels_last) == on
        z.grad = None
        x = decode_with_grad(vae, z, 0.18215, chunk=3, channels_last=on)
        x.square().mean().backward()
        outs.append(x.detach())
        grads.append(z.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(outs[2], outs[0])  # switching back restores the NCHW computation


def test_diffusion_loss_matches_formula():
    parts = build_tiny_svd()
    unet = parts["unet"]
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 4, 8, 12)
    cond = torch.randn(2, 4, 4, 8, 12)
    emb, ids = torch.randn(2, 1, 32), torch.tensor([[6, 127, 0.02]] * 2)
    sampler = edm.SigmaSampler("lognormal")
    loss, z0_hat, sigma = DiffusionLoss(sampler)(unet, z0, cond, emb, ids, g)
    # recompute by hand with the same draws
    g2 = torch.Generator().manual_seed(0)
    s = sampler(2, g2)
    eps = torch.randn(z0.shape, generator=g2)
    x_t = z0 + s.view(2, 1, 1, 1, 1) * eps
    F = unet(torch.cat([edm.c_in(s.view(2, 1, 1, 1, 1)) * x_t, cond], 2), edm.c_noise(s), emb, ids).sample
    ref_hat = edm.c_skip(s.view(2, 1, 1, 1, 1)) * x_t + edm.c_out(s.view(2, 1, 1, 1, 1)) * F
    ref = (edm.loss_weight(s) * ((ref_hat - z0) ** 2).mean((1, 2, 3, 4))).mean()
    assert torch.allclose(sigma, s) and torch.allclose(z0_hat, ref_hat, atol=1e-5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_schedules_and_frame_selection():
    assert objective_weights(1, 2, 0.9, 60) == (1.0, 0.0)  # staged, epoch 1
    assert objective_weights(2, 2, 0.9, 60) == (0.9, 60)  # staged, epoch 2
    assert objective_weights(1, 1, 0.9, 100) == (0.9, 100)  # joint
    assert objective_weights(2, None, 0.9, 100) == (1.0, 0.0)  # diffusion only
    assert select_frames(5, "all") == [0, 1, 2, 3, 4]
    assert select_frames(5, "every_k:2") == [0, 2, 4]
    with pytest.raises(ValueError, match="decode_frames"):
        select_frames(5, "half")
