"""The LTX-Video backbone (trainers/backbones/ltx.py) on tiny random models of the real classes:
frame / latent / box alignment on hand cases, the image conditioning of one diffusion step, the LSA
gradient through the decoder, LoRA and full fine-tuning through the trainer, resume, and the
exported transformer generating through LTXImageToVideoPipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainers.config import load_config
from trainers.losses import patch_mask

ROOT = Path(__file__).resolve().parents[1]
# the tiny VAE compresses time 2x: clips of 1 + 2k frames (9 at the smoke size 64 x 96)
COMMON = [
    "model=ltx-tiny",
    "data=synthetic",
    "data.train.num_clips=4",
    "data.clip_len=9",
    "train.checkpoint_every=100",
    "train.epochs=2",
    "train.lr=1e-3",
]


@pytest.fixture(scope="module")
def backbone(tiny_cache):
    from trainers.backbones.ltx import LTXBackbone

    return LTXBackbone(load_config(COMMON).model)


def _bare(r_t):
    from trainers.backbones.ltx import LTXBackbone

    bb = LTXBackbone.__new__(LTXBackbone)
    bb.r_t, bb.r_s, bb.p, bb.p_t = r_t, 32, 1, 1
    return bb


def test_frames_of_latent_hand_cases():
    bb = _bare(8)  # LTX-Video's VAE: 25 frames -> 4 latent frames
    assert bb.num_latent_frames(25) == 4
    assert bb.frames_of_latent(0) == [0]
    assert bb.frames_of_latent(1) == list(range(1, 9))
    assert bb.frames_of_latent(3) == list(range(17, 25))
    assert sorted(j for k in range(4) for j in bb.frames_of_latent(k)) == list(range(25))
    bb2 = _bare(2)
    assert [bb2.frames_of_latent(k) for k in range(5)] == [[0], [1, 2], [3, 4], [5, 6], [7, 8]]
    with pytest.raises(ValueError, match=r"data.clip_len=8: .* 1 \+ 2 k frames \(e.g. data.clip_len=9\)"):
        bb2.check_frames(8)
    with pytest.raises(ValueError, match=r"data.clip_len=24: .*data.clip_len=25"):
        bb.check_frames(24)
    with pytest.raises(ValueError, match="data.width=100: must be a multiple of 32"):
        bb.check_frames(25, 320, 100)
    bb.check_frames(25, 320, 512)


def test_vae_alignment_on_the_tiny_model(backbone):
    """Latent frame k depends only on video frames up to its last (causal encoder), so latent frame 0
    is the image conditioning the pipeline encodes from frame 0 alone; 5 latent frames decode to 9."""
    vae = backbone.parts.vae
    torch.manual_seed(0)
    x = torch.rand(1, 9, 3, 64, 96) * 2 - 1
    g = torch.Generator()
    with torch.no_grad():
        z = backbone.encode(x, g)
        mode = vae.encode(x.permute(0, 2, 1, 3, 4)).latent_dist.mode()
        alone = vae.encode(x[:, :1].permute(0, 2, 1, 3, 4)).latent_dist.mode()
        y = x.clone()
        y[:, 5:] = -y[:, 5:]  # change frames 5..8 = latent frames 3, 4
        mode_y = vae.encode(y.permute(0, 2, 1, 3, 4)).latent_dist.mode()
    assert z.shape == (1, 8, 5, 8, 12)
    assert mode.shape == (1, 8, 5, 8, 12)
    assert torch.allclose(mode[:, :, :1], alone, atol=1e-5)
    assert torch.allclose(mode[:, :, :3], mode_y[:, :, :3], atol=1e-5)  # frames 0..4 only
    assert not torch.allclose(mode[:, :, 3:], mode_y[:, :, 3:], atol=1e-3)
    from omegaconf import OmegaConf

    loss_cfg = OmegaConf.create({"decode_checkpoint": False, "decode_checkpoint_level": "chunk"})
    x_hat = backbone.decode(torch.zeros(2, 8, 5, 8, 12), loss_cfg)
    assert x_hat.shape == (2, 9, 3, 64, 96)
    assert backbone.decode(torch.zeros(1, 8, 5, 8, 12), loss_cfg, [0, 4, 8]).shape == (1, 3, 3, 64, 96)


class _Spy(torch.nn.Module):
    """Stands in for the transformer: records its inputs, returns zeros (so z0_hat = x_t)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = {}

    def forward(self, hidden_states, timestep, **kw):
        self.seen = dict(hidden_states=hidden_states, timestep=timestep, **kw)
        return (hidden_states * self.w,)


def test_diffusion_step_conditions_on_the_clean_first_latent(backbone):
    torch.manual_seed(1)
    z0 = torch.randn(2, 8, 5, 8, 12)
    cond = backbone.condition(torch.zeros(2, 9, 3, 64, 96), z0, None)
    spy = _Spy()
    out = backbone.diffusion_loss(spy, z0, cond, torch.Generator().manual_seed(3))
    B, S = 2, 5 * 8 * 12
    t = spy.seen["timestep"]
    assert t.shape == (B, S)
    per_frame = t.view(B, 5, 8 * 12)
    assert (per_frame[:, 0] == 0).all()  # conditioning frame: t = 0
    for b in range(B):
        assert torch.allclose(per_frame[b, 1:], torch.full_like(per_frame[b, 1:], 1000 * float(out.sigma[b])))
    x_t = backbone.unpack(spy.seen["hidden_states"], 5, 8, 12)
    assert torch.equal(x_t[:, :, 0], z0[:, :, 0])  # the clean image latent
    assert not torch.allclose(x_t[:, :, 1:], z0[:, :, 1:])
    # a zero velocity: z0_hat = x_t, L_diff = mean of (eps - z0)^2 over the noised frames only
    assert torch.equal(out.z0_hat, x_t)
    eps = (x_t[:, :, 1:] - (1 - out.sigma.view(B, 1, 1, 1, 1)) * z0[:, :, 1:]) / out.sigma.view(B, 1, 1, 1, 1)
    assert torch.allclose(out.loss, ((eps - z0[:, :, 1:]) ** 2).mean(), rtol=1e-4)
    assert spy.seen["num_frames"] == 5 and spy.seen["height"] == 8 and spy.seen["width"] == 12
    assert spy.seen["encoder_hidden_states"].shape[0] == B


def test_masks_follow_the_decoded_frames(tiny_cache, tmp_path):
    """decode_frames=every_k:4 on a 9-frame clip: the feature loss sees decoded frames 0, 4, 8 with the
    boxes of video frames 0, 4, 8 (a box only in frame 4 weighs alpha there, nowhere else)."""
    from trainers.backbone_trainer import BackboneTrainer

    cfg = load_config(
        COMMON
        + ["schedule=joint", "loss.decode_frames=every_k:4", "train.max_steps=1", f"train.out_dir={tmp_path / 'mask'}"]
    )
    tr = BackboneTrainer(cfg)
    seen = {}

    def spy(x_hat, x0, boxes, keys=None):
        seen.update(x_hat=x_hat, x0=x0, boxes=boxes)
        return (x_hat - x0).pow(2).mean()

    tr.objective.L_feat = spy  # the objective's L_feat (trainers/objective.py)
    batch = next(iter(tr.loader))
    boxes = [[np.zeros((0, 4), np.float32) for _ in range(9)]]
    boxes[0][4] = np.array([[0, 0, 20, 20]], np.float32)
    batch = dict(batch, boxes=boxes)
    loss, _ = tr.compute_loss(batch, torch.Generator().manual_seed(0))
    assert seen["x_hat"].shape == (1, 3, 3, 64, 96)
    assert torch.equal(seen["x0"], batch["frames"][:, [0, 4, 8]])
    assert [len(b) for b in seen["boxes"][0]] == [0, 1, 0]
    m = patch_mask(seen["boxes"][0], (5, 7), (64, 96), "hybrid", 10.0)
    assert (m[0] == 1).all() and (m[2] == 1).all()
    assert m[1, 0, 0] == 10 and m[1, 1, 1] == 10 and m[1, 2, 2] == 1  # 20 px of 64 -> rows 0-1 of 5
    loss.backward()
    grads = [p.grad for p in tr.unet.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def _run_cli(out_dir, *overrides):
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "trainers.train", *COMMON, f"train.out_dir={out_dir}", *overrides]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr  # the run folder on stdout, progress (logging) on stderr


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def resumed_runs(tiny_cache, tmp_path_factory):
    """Staged, full transformer: 6 steps in one go vs 3 + a fresh process resuming for 3 more (crossing
    the end of the diffusion-only epoch into the LSA epoch)."""
    base = tmp_path_factory.mktemp("ltx-runs")
    one, two = base / "one_go", base / "resumed"
    args = ["schedule=staged", "loss.variant=hybrid", "adapter=unet"]
    _run_cli(one, *args, "train.max_steps=6")
    _run_cli(two, *args, "train.max_steps=3")
    out2 = _run_cli(two, *args, "train.max_steps=6")
    return one, two, out2


def test_resume_gives_identical_weights(resumed_runs):
    one, two, out2 = resumed_runs
    assert "resumed from" in out2 and "step-00000003" in out2
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    log_a = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["epoch"] for r in log_a] == [1, 1, 1, 1, 2, 2]
    assert all("loss_feat" not in r for r in log_a[:4]) and all(r["loss_feat"] > 0 for r in log_a[4:])
    summary = json.loads((one / "summary.json").read_text())
    assert summary["transformer_params"] == summary["trainable_params"]


def test_exported_transformer_generates_through_the_pipeline(resumed_runs, tiny_cache):
    from diffusers import LTXImageToVideoPipeline, LTXVideoTransformer3DModel

    from trainers.backbones.ltx import resolve_ltx_source

    one = resumed_runs[0]
    base = resolve_ltx_source(load_config(COMMON).model)
    tr = LTXVideoTransformer3DModel.from_pretrained(one / "transformer")
    pipe = LTXImageToVideoPipeline.from_pretrained(base, transformer=tr)
    base_tr = LTXVideoTransformer3DModel.from_pretrained(base, subfolder="transformer")
    assert max((p - q).abs().max().item() for p, q in zip(tr.parameters(), base_tr.parameters())) > 0
    from PIL import Image

    video = pipe(
        image=Image.fromarray(np.full((64, 96, 3), 128, np.uint8)),
        prompt="a street",
        height=64,
        width=96,
        num_frames=9,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert np.asarray(video).shape == (1, 9, 64, 96, 3)


def test_lora_trains_only_adapters_and_generates_through_the_backbone(tiny_cache, tmp_path):
    from trainers.backbone_trainer import BackboneTrainer
    from trainers.backbones.ltx import LTXBackbone, load_ltx

    cfg = load_config(
        COMMON + ["adapter=lora", "schedule=joint", "train.max_steps=2", f"train.out_dir={tmp_path / 'lora'}"]
    )
    trainer = BackboneTrainer(cfg)
    model = trainer.acc.unwrap_model(trainer.unet)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    trainer.train()
    weights = _weights(tmp_path / "lora")
    assert not any("lora" in k for k in weights)
    base = load_ltx(cfg.model).transformer.state_dict()
    assert weights.keys() == base.keys()
    changed = [k for k in weights if not torch.equal(weights[k], base[k])]
    targets = ("to_q", "to_k", "to_v", "to_out.0")
    assert changed and all(any(t in k for t in targets) for k in changed)
    bb = LTXBackbone(cfg.model, parts=trainer.backbone.parts)
    pipe = bb.pipeline(tmp_path / "lora" / "transformer")
    gen = load_config(COMMON).data
    from omegaconf import OmegaConf

    gen_cfg = OmegaConf.create(dict(height=gen.height, width=gen.width, num_frames=9, num_inference_steps=2))
    video = bb.generate(pipe, np.full((64, 96, 3), 100, np.uint8), gen_cfg, torch.Generator().manual_seed(0))
    assert video.shape == (9, 64, 96, 3) and video.dtype == np.uint8


def test_clip_length_error_names_the_key(tiny_cache, tmp_path):
    from data.cli import InputError
    from trainers.backbone_trainer import BackboneTrainer

    cfg = load_config(
        [c for c in COMMON if not c.startswith("data.clip_len")]
        + ["data.clip_len=8", "train.max_steps=1", f"train.out_dir={tmp_path / 'bad'}"]
    )
    with pytest.raises(InputError, match=r"model=ltx-tiny: data.clip_len=8: .*data.clip_len=9"):
        BackboneTrainer(cfg)
