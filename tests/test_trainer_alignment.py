"""The representation-alignment losses of Table VII (loss.variant=repa|trd, trainers/alignment.py):
each loss against a hand computation, the gradient path (projector and denoiser, through the hooked
block only), the projector saved and resumed with the checkpoint, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from data.cli import ConfigKeyError, InputError
from trainers.config import load_config
from trainers.losses import repa_loss, trd_loss

S = 1 / math.sqrt(2)


# ------------------------------------------------------------------ the losses by hand
def test_repa_loss_is_the_mean_negative_cosine_per_patch():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one frame, two patches
    f = torch.tensor([[[1.0, 1.0], [0.0, -3.0]]])
    # cos = 1/sqrt(2) and -1; L = -(1/sqrt(2) - 1) / 2
    assert repa_loss(h, f).item() == pytest.approx(-(S - 1) / 2, abs=1e-6)
    # LSA's mask on the patch terms: the first patch in a box (alpha = 10)
    m = torch.tensor([[10.0, 1.0]])
    assert repa_loss(h, f, m).item() == pytest.approx(-(10 * S - 1) / 2, abs=1e-6)
    # scale-free per token: the cosine ignores norms
    assert repa_loss(3 * h, 0.5 * f).item() == pytest.approx(repa_loss(h, f).item(), abs=1e-6)


def test_trd_loss_by_hand_on_two_frames_of_one_patch():
    h = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [B=1, T=2, P=1, d=2]
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    # S_d = [[1, 0], [0, 1]], S_f = [[1, s], [s, 1]]: |diff| - 0.1 -> off-diagonal s - 0.1, diagonal 0
    L, spatial, temporal = trd_loss(h, f, margin=0.1)
    assert L.item() == pytest.approx(2 * (S - 0.1) / 4, abs=1e-6)
    assert spatial.item() == pytest.approx(0.0, abs=1e-7)  # a token against itself (and its frame)
    assert temporal.item() == pytest.approx(S - 0.1, abs=1e-6)
    # the margin swallows differences below it
    assert trd_loss(h, f, margin=0.8)[0].item() == 0.0
    # the mask weighs the row token: frame 0's token in a box (10), frame 1's not (1)
    m = torch.tensor([[[10.0], [1.0]]])
    assert trd_loss(h, f, 0.1, m)[0].item() == pytest.approx((10 + 1) * (S - 0.1) / 4, abs=1e-6)


def _trd_by_loops(h, f, margin, m=None):
    """L_TRD written as VideoREPA states it, pair by pair."""
    B, T, P, _ = h.shape
    hn, fn = torch.nn.functional.normalize(h, dim=-1), torch.nn.functional.normalize(f, dim=-1)
    tot, sp, tp, n_sp, n_tp = 0.0, 0.0, 0.0, 0, 0
    for b in range(B):
        for t in range(T):
            for i in range(P):
                for u in range(T):
                    for j in range(P):
                        d = abs(float(hn[b, t, i] @ hn[b, u, j]) - float(fn[b, t, i] @ fn[b, u, j]))
                        g = max(d - margin, 0.0) * (1.0 if m is None else float(m[b, t, i]))
                        tot += g
                        if t == u:
                            sp, n_sp = sp + g, n_sp + 1
                        else:
                            tp, n_tp = tp + g, n_tp + 1
    return tot / (B * T * P * T * P), sp / n_sp, tp / n_tp


def test_trd_loss_equals_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    h, f = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    m = torch.where(torch.rand(2, 3, 4, generator=g) > 0.5, 10.0, 1.0)
    for mask in (None, m):
        got = trd_loss(h, f, 0.1, mask)
        want = _trd_by_loops(h, f, 0.1, mask)
        assert [x.item() for x in got] == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ on the tiny U-Net through the trainer
COMMON = ["model=tiny", "data=synthetic", "data.train.num_clips=2", "data.clip_len=4", "schedule=joint"]


def _trainer(tmp_path, *over):
    from trainers.loop import Trainer

    cfg = load_config([*COMMON, f"train.out_dir={tmp_path}", "train.checkpoint_every=100", *over])
    return Trainer(cfg)


@pytest.mark.parametrize("variant", ["repa", "trd"])
def test_gradient_reaches_projector_and_the_blocks_before_the_hook(tiny_cache, tmp_path, variant):
    """L = coeff L_align alone (diff_weight 0): the projector and the U-Net up to the hooked block get
    a gradient; the blocks after it (which only L_diff sees) get none."""
    from trainers.loop import step_generator

    tr = _trainer(tmp_path, f"loss.variant={variant}", "loss.diff_weight=0", "loss.align.block=down_blocks.0")
    batch = next(iter(tr.loader))
    loss, terms = tr.compute_loss(batch, step_generator(0, 0))
    tr.acc.backward(loss)
    proj = tr.objective.L_feat.projector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())

    def grad(prefix):
        return sum(
            float(p.grad.abs().sum())
            for n, p in tr.unet.named_parameters()
            if n.startswith(prefix) and p.grad is not None
        )

    assert grad("down_blocks.0.") > 0 and grad("conv_in.") > 0
    assert grad("up_blocks.") == 0 and grad("down_blocks.1.") == 0 and grad("mid_block.") == 0
    assert terms["loss"] == pytest.approx(0.5 * terms["loss_feat"], rel=1e-6)  # loss.align.coeff = 0.5


def test_projector_is_saved_and_resumed_with_the_checkpoint(tiny_cache, tmp_path):
    """2 steps in one go vs 1 step + a new trainer resuming for 1 more: the same projector, optimizer
    state and U-Net, bit for bit (the resumed run would diverge with a fresh projector)."""
    from safetensors.torch import load_file

    from trainers.alignment import PROJECTOR_FILE

    args = ["loss.variant=repa", "loss.align.mask=hybrid", "loss.align.projector_dim=16"]
    _trainer(tmp_path / "one", *args, "train.max_steps=2").train()
    _trainer(tmp_path / "two", *args, "train.max_steps=1").train()
    ck1 = tmp_path / "two" / "checkpoints" / "step-00000001" / PROJECTOR_FILE
    assert ck1.exists()
    tr = _trainer(tmp_path / "two", *args, "train.max_steps=2")
    tr.train()
    assert tr.objective.L_feat.load(ck1.parent)  # the file holds the step-1 projector ...
    a = torch.load(tmp_path / "one" / "checkpoints" / "step-00000002" / PROJECTOR_FILE, weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "step-00000002" / PROJECTOR_FILE, weights_only=True)
    first = torch.load(ck1, weights_only=True)
    assert a["shape"] == [64, 16, 32] and a["block"] == "down_blocks.1"
    assert all(torch.equal(a["projector"][k], b["projector"][k]) for k in a["projector"])
    assert not all(torch.equal(a["projector"][k], first["projector"][k]) for k in a["projector"])  # it trained
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    ua = load_file(str(tmp_path / "one" / "unet" / "diffusion_pytorch_model.safetensors"))
    ub = load_file(str(tmp_path / "two" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)


def test_a_checkpoint_without_projector_starts_a_fresh_one_and_a_wrong_one_is_refused(tmp_path):
    from trainers.alignment import RepresentationAlignmentLoss

    class Enc:
        pass

    enc = Enc()
    enc.encoder = torch.nn.Linear(1, 1)
    a = RepresentationAlignmentLoss(enc, "repa", "down_blocks.1", 8, seed=3)
    assert not a.load(tmp_path)  # e.g. the diffusion-only first epoch of a staged row
    a.ensure_projector(4, 6, "cpu")
    fresh = [p.detach().clone() for p in a.projector.parameters()]
    b = RepresentationAlignmentLoss(enc, "repa", "down_blocks.1", 8, seed=3)
    b.ensure_projector(4, 6, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(fresh, b.projector.parameters()))  # seeded by train.seed
    a.save(tmp_path)
    c = RepresentationAlignmentLoss(enc, "repa", "down_blocks.1", 16, seed=3)
    assert c.load(tmp_path)  # pending until the projector exists
    with pytest.raises(InputError, match="loss.align.projector_dim=16"):
        c.ensure_projector(4, 6, "cpu")


def test_refusals_name_their_key(tiny_cache):
    from trainers.alignment import build_feature_loss

    with pytest.raises(ConfigKeyError, match="loss.variant=repa.*model.backbone=ltx"):
        build_feature_loss(load_config(["model=ltx-tiny", "loss.variant=repa"]), None)
    with pytest.raises(ConfigKeyError, match="train.mixed_precision=fp16"):
        build_feature_loss(load_config(["loss.variant=trd", "train.mixed_precision=fp16"]), None)
    from trainers.alignment import find_block

    with pytest.raises(ConfigKeyError, match="loss.align.block='nope'"):
        find_block(torch.nn.Sequential(torch.nn.Linear(1, 1)), "nope")
