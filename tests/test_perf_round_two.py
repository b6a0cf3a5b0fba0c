"""The round-two performance levers: optimizer choice, regional compilation of the U-Net, the
decoder's attention and checkpoint level, SDPA kernels, the gradient of an approximation against
the exact one, and the decoder's backward profile (tiny model, CPU)."""

import importlib.util
import sys

import pytest
import torch
from omegaconf import OmegaConf

from trainers.config import load_config

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
SMALL = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=2",
    "data.clip_len=2",
    "data.height=32",
    "data.width=48",
    "schedule=joint",
    "train.max_steps=1",
]


def _train_cfg(**kw):
    return OmegaConf.create(
        dict(
            dict(
                lr=1e-3,
                weight_decay=0.0,
                adam_betas=[0.9, 0.999],
                adam_fused=False,
                optimizer="adamw",
                max_grad_norm=1.0,
            ),
            **kw,
        )
    )


# ------------------------------------------------------------------ train.optimizer


def test_optimizer_choice_and_its_errors():
    from trainers.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert type(build_optimizer(params, _train_cfg())) is torch.optim.AdamW
    with pytest.raises(ValueError, match="train.optimizer='sgd': valid are adamw, adamw8bit, adamw_offload"):
        build_optimizer(params, _train_cfg(optimizer="sgd"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="adamw_offload .* CUDA device"):
            build_optimizer(params, _train_cfg(optimizer="adamw_offload"))


def test_missing_extra_is_named(monkeypatch):
    from trainers.optim import build_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"train.optimizer=adamw8bit needs .*bitsandbytes.*perf extra"):
        build_optimizer([torch.nn.Parameter(torch.zeros(3))], _train_cfg(optimizer="adamw8bit"))


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes (the perf extra) is not installed")
def test_adamw8bit_keeps_8bit_states_and_follows_adamw():
    from trainers.optim import build_optimizer, state_bytes

    torch.manual_seed(0)
    w0 = torch.randn(64, 128)
    x = torch.randn(16, 128)
    weights, opts = {}, {}
    for name in ("adamw", "adamw8bit"):
        w = torch.nn.Parameter(w0.clone())
        opt = build_optimizer([w], _train_cfg(optimizer=name))
        for _ in range(5):
            (x @ w.T).square().mean().backward()
            opt.step()
            opt.zero_grad()
        weights[name], opts[name] = w.detach(), opt
    st = opts["adamw8bit"].state[next(iter(opts["adamw8bit"].state))]
    assert st["state1"].dtype == torch.uint8 and st["state2"].dtype == torch.uint8
    assert state_bytes(opts["adamw8bit"]) < state_bytes(opts["adamw"]) / 3  # 2 bytes + scales vs 8 per value
    step = (weights["adamw"] - w0).abs().mean()
    assert step > 1e-3  # the weights moved
    assert (weights["adamw8bit"] - weights["adamw"]).abs().mean() < 0.1 * step  # close to AdamW's update


def test_optim_check_compares_paired_curves():
    import numpy as np

    from benchmark.perf.optim_check import compare_curves

    ref = dict(loss=np.array([4.0, 2.0, 1.0, 1.0]), loss_feat=np.array([2.0, 1.0, 0.5, 0.5]))
    same = compare_curves(ref, ref, window=2)
    assert same["max_rel_diff_loss"] == 0 and same["final_loss_feat_rel_diff"] == 0
    off = compare_curves(
        ref, dict(loss=np.array([4.0, 2.0, 1.1, 1.0]), loss_feat=np.array([2.0, 1.0, 0.5, 0.55])), window=2
    )
    assert off["max_rel_diff_loss"] == pytest.approx(0.1) and off["final_loss_feat_rel_diff"] == pytest.approx(0.1)
    assert 0 < off["max_rel_diff_loss_smoothed"] < 0.1


# ------------------------------------------------------------------ compilation, attention, checkpointing


def test_unet_blocks_compiles_each_repeated_block_in_place():
    from trainers.loop import UNET_BLOCKS, compile_parts
    from trainers.models import build_tiny_svd

    unet = build_tiny_svd()["unet"]
    assert compile_parts(["unet_blocks"], unet=unet, vae_decoder=None, dino=None) == ["unet_blocks"]
    blocks = [m for m in unet.modules() if type(m).__name__ in UNET_BLOCKS]
    assert len(blocks) == 16 and all(m._compiled_call_impl is not None for m in blocks)
    assert unet._compiled_call_impl is None  # the U-Net itself stays eager between the blocks
    assert "up_blocks.0.resnets.0.spatial_res_block.conv1.weight" in unet.state_dict()  # keys unchanged
    with pytest.raises(ValueError, match="unet .* and unet_blocks .* exclude each other"):
        compile_parts(["unet", "unet_blocks"], unet=unet)


def _tiny_vae():
    from trainers.models import build_tiny_svd

    return build_tiny_svd()["vae"].eval()


def test_decoder_attention_switch_keeps_the_frames():
    from trainers.decoder_speed import decode_with_grad, decoder_attention, set_decoder_attention

    vae = _tiny_vae()
    z = torch.randn(1, 2, 4, 4, 6)
    assert decoder_attention(vae) == "sdpa"  # diffusers' default: F.scaled_dot_product_attention
    with torch.no_grad():
        a = decode_with_grad(vae, z, 1.0)
        set_decoder_attention(vae, "eager")
        assert decoder_attention(vae) == "eager"
        b = decode_with_grad(vae, z, 1.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="loss.decode_attention='flash'"):
        set_decoder_attention(vae, "flash")


def test_decode_checkpoint_level_same_gradient():
    from trainers.decoder_speed import (
        block_checkpoint,
        chunk_checkpoint,
        decode_with_grad,
        set_decoder_block_checkpointing,
    )

    vae = _tiny_vae()
    z0 = torch.randn(1, 3, 4, 4, 6)
    grads = {}
    for level in ("none", "chunk", "blocks"):
        loss_cfg = OmegaConf.create(
            dict(decode_checkpoint=level != "none", decode_checkpoint_level="chunk" if level == "none" else level)
        )
        set_decoder_block_checkpointing(vae, block_checkpoint(loss_cfg))
        assert vae.decoder.gradient_checkpointing is (level == "blocks")
        z = z0.clone().requires_grad_(True)
        decode_with_grad(vae, z, 1.0, chunk=2, use_checkpoint=chunk_checkpoint(loss_cfg)).square().mean().backward()
        grads[level] = z.grad
    torch.testing.assert_close(grads["chunk"], grads["none"])
    torch.testing.assert_close(grads["blocks"], grads["none"])
    with pytest.raises(ValueError, match="loss.decode_checkpoint_level='layer'"):
        chunk_checkpoint(OmegaConf.create(dict(decode_checkpoint=True, decode_checkpoint_level="layer")))


def test_sdpa_backend_context():
    import torch.nn.functional as F

    from trainers.loop import sdpa_context

    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    with sdpa_context("auto"):
        a = F.scaled_dot_product_attention(q, k, v)
    with sdpa_context("math"):
        b = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="train.sdpa_backend='fast'"):
        sdpa_context("fast")


# ------------------------------------------------------------------ on a tiny trainer


@pytest.fixture(scope="module")
def trainer(tiny_cache, tmp_path_factory):
    from trainers.loop import Trainer

    cfg = load_config(
        SMALL
        + [
            f"train.out_dir={tmp_path_factory.mktemp('r2') / 'run'}",
            "loss.decode_attention=eager",
            "loss.decode_checkpoint=true",
            "loss.decode_checkpoint_level=blocks",
            "train.sdpa_backend=math",
        ]
    )
    tr = Trainer(cfg)
    return tr, next(iter(tr.loader))


def test_switches_reach_the_trainer(trainer):
    from trainers.decoder_speed import decoder_attention

    tr, batch = trainer
    assert decoder_attention(tr.parts.vae) == "eager" and tr.parts.vae.decoder.gradient_checkpointing
    loss, terms = tr.compute_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and terms["loss_feat"] > 0


@pytest.mark.slow
def test_gradient_fidelity_exact_is_one_and_every_k_is_not(trainer):
    from benchmark.perf.step import gradient_fidelity, lsa_gradients

    tr, batch = trainer
    exact = lsa_gradients(tr, batch, offload=True)  # the reference as the sweep holds it
    again = gradient_fidelity(exact, lsa_gradients(tr, batch))
    assert again["grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert again["feat_grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert again["loss_feat_rel_diff"] == pytest.approx(0.0, abs=1e-6)
    tr.cfg.loss.decode_frames = "every_k:2"  # 2 frames: frame 0 only
    try:
        approx = gradient_fidelity(exact, lsa_gradients(tr, batch))
    finally:
        tr.cfg.loss.decode_frames = "all"
    assert approx["feat_grad_cosine"] < 0.999 and approx["grad_cosine"] < 0.999
    assert approx["loss_feat_rel_diff"] > 1e-4
    assert all(p.grad is None for p in tr.unet.parameters())  # nothing left behind, nothing stepped


@pytest.mark.slow
def test_decoder_profile_names_the_backward_ops(trainer):
    from benchmark.perf.decoder_profile import markdown_table, profile_decoder_backward

    tr, batch = trainer
    p = profile_decoder_backward(tr, batch, top=5)
    assert p["frames"] == 2 and p["forward_s"] > 0 and p["backward_s"] > 0 and p["time_kind"] == "self CPU time"
    assert len(p["ops"]) == 5 and all(r["self_ms"] > 0 for r in p["ops"])
    assert any("backward" in r["op"].lower() for r in p["ops"])
    assert sum(r["share"] for r in p["ops"]) <= 1.0 + 1e-9
    assert "| operator |" in "\n".join(markdown_table(p))


@pytest.mark.slow
def test_unet_blocks_compiled_give_the_eager_gradient(monkeypatch):
    """The compiled blocks under the U-Net's gradient checkpointing: same output and gradient as
    eager. Traced with dynamo + AOT autograd (backend aot_eager): inductor's C++ code generation
    would take minutes on a CPU and adds no tracing path of its own."""
    import copy

    from trainers.loop import compile_parts
    from trainers.models import build_tiny_svd

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="aot_eager"))
    torch._dynamo.reset()
    eager = build_tiny_svd()["unet"]
    eager.enable_gradient_checkpointing()
    eager.train()
    compiled = copy.deepcopy(eager)
    compile_parts(["unet_blocks"], unet=compiled)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 8, 4, 6, generator=g)
    t = torch.tensor([0.5])
    emb = torch.randn(1, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    outs, grads = [], []
    for m in (eager, compiled):
        out = m(x, t, encoder_hidden_states=emb, added_time_ids=ids).sample
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()
