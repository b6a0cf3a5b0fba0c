"""The speed/memory switches (docs/perf.md) change time and memory, never the loss."""

import pytest
import torch

from trainers.config import load_config

COMMON = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=2",
    "data.clip_len=4",
    "schedule=joint",
    "train.max_steps=1",
]


class CountingEncoder:
    """Wraps DinoFeatures and counts the frames it encodes."""

    def __init__(self, inner):
        self.inner, self.frames = inner, 0
        self.encoder, self.grid = inner.encoder, inner.grid

    def __call__(self, x):
        self.frames += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def dino(tiny_cache):
    from trainers.models import load_dino

    cfg = load_config(COMMON)
    return load_dino(cfg.model).eval()


def test_real_feature_cache_gives_the_same_loss_and_skips_the_encoder(dino):
    from trainers.losses import DinoFeatures, SemanticAlignmentLoss

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 3, 64, 96, generator=g) * 2 - 1
    x_hat = (torch.rand(2, 3, 3, 64, 96, generator=g) * 2 - 1).requires_grad_()
    boxes = [[torch.tensor([[10.0, 10.0, 40.0, 30.0]])] * 3, [torch.zeros(0, 4)] * 3]
    keys = [(0, (0, 1, 2)), (5, (0, 1, 2))]
    plain = SemanticAlignmentLoss(DinoFeatures(dino), "hybrid", 10.0)
    enc = CountingEncoder(DinoFeatures(dino))
    cached = SemanticAlignmentLoss(enc, "hybrid", 10.0, cache_real=True)
    want = plain(x_hat, x0, boxes, keys)
    first = cached(x_hat, x0, boxes, keys)
    assert enc.frames == 12 and set(cached.cache) == set(keys)  # 6 real + 6 generated frames
    second = cached(x_hat, x0, boxes, keys)
    assert enc.frames == 18  # only the 6 generated frames
    assert torch.equal(first, want) and torch.equal(second, want)
    second.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    # a batch with one clip not yet seen encodes its real frames again
    cached(x_hat, x0, boxes, [keys[0], (7, (0, 1, 2))])
    assert enc.frames == 30 and (7, (0, 1, 2)) in cached.cache


def test_dino_attention_switch_keeps_the_features(dino):
    from trainers.loop import set_attention

    x = torch.rand(2, 3, 98, 98)
    set_attention(dino, "sdpa")
    with torch.no_grad():
        a = dino(pixel_values=x).last_hidden_state
    set_attention(dino, "eager")
    with torch.no_grad():
        b = dino(pixel_values=x).last_hidden_state
    set_attention(dino, "sdpa")
    assert dino.config._attn_implementation == "sdpa"
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="loss.dino_attention='flash'"):
        set_attention(dino, "flash")


def test_compile_switch_rejects_unknown_parts_and_skips_absent_ones():
    from trainers.loop import compile_parts

    with pytest.raises(ValueError, match=r"train.compile=\['vae'\]: unknown part\(s\) \['vae'\]"):
        compile_parts(["vae"], unet=torch.nn.Linear(1, 1), vae_decoder=None, dino=None)
    # a diffusion-only stage has no DINOv2: the paper profile's [vae_decoder, dino] still applies
    decoder = torch.nn.Linear(1, 1)
    assert compile_parts(["vae_decoder", "dino"], unet=torch.nn.Linear(1, 1), vae_decoder=decoder, dino=None) == [
        "vae_decoder"
    ]
    assert decoder._compiled_call_impl is not None


def test_switches_together_train_one_step(tiny_cache, tmp_path):
    """torch.compile on DINOv2, eager attention and the feature cache in a real trainer step."""
    from trainers.loop import Trainer

    cfg = load_config(
        COMMON
        + [
            "train.compile=[dino]",
            "loss.dino_attention=eager",
            "loss.real_feature_cache=true",
            f"train.out_dir={tmp_path / 'run'}",
        ]
    )
    tr = Trainer(cfg)
    assert tr.dino._compiled_call_impl is not None
    tr.train()
    assert len(tr.feat_loss.cache) == 1 and (tmp_path / "run" / "unet").is_dir()
