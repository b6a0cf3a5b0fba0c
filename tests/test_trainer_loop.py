"""The training loop end to end on tiny models: resume, LoRA, NaN stop, export into the SVD pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainers.config import load_config

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=4",
    "data.clip_len=4",
    "train.checkpoint_every=100",
    "train.epochs=2",
]


def _run_cli(out_dir, *overrides):
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "trainers.train", *COMMON, f"train.out_dir={out_dir}", *overrides]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr  # the run folder on stdout, progress (logging) on stderr


def _unet_weights(run_dir):
    return load_file(str(Path(run_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def resumed_runs(tiny_cache, tmp_path_factory):
    """6 steps in one go vs 3 steps + a fresh process resuming for 3 more (crossing an epoch end)."""
    base = tmp_path_factory.mktemp("runs")
    one, two = base / "one_go", base / "resumed"
    args = ["schedule=joint", "loss.variant=hybrid"]
    out = _run_cli(one, *args, "train.max_steps=6")
    assert f"run folder: {one.resolve()}" in out
    _run_cli(two, *args, "train.max_steps=3")
    out2 = _run_cli(two, *args, "train.max_steps=6")
    return one, two, out2


def test_resume_gives_identical_weights(resumed_runs):
    one, two, out2 = resumed_runs
    assert "resumed from" in out2 and "step-00000003" in out2
    a, b = _unet_weights(one), _unet_weights(two)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    log_a = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [1, 2, 3, 4, 5, 6] == [r["step"] for r in log_b]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["clips"] for r in log_a] == [r["clips"] for r in log_b]  # the same clips, in the same order
    assert sorted(c for r in log_a[:4] for c in r["clips"]) == [0, 1, 2, 3]  # epoch 1: every clip once
    assert all(r["loss_feat"] > 0 for r in log_a)  # joint: the feature loss is on from step 1
    assert [r["epoch"] for r in log_a] == [1, 1, 1, 1, 2, 2]


def test_checkpoint_contents_and_summary(resumed_runs):
    one = resumed_runs[0]
    ckpts = sorted((one / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000004", "step-00000006"]  # keep_checkpoints=2
    state = json.loads((ckpts[-1] / "trainer_state.json").read_text())
    assert state == dict(global_step=6, micro_step=6, epoch=2, batch_in_epoch=2)
    names = {p.name for p in ckpts[-1].iterdir()}
    assert any(n.startswith("optimizer") for n in names) and any(n.startswith("random_states") for n in names)
    assert not list((one / "checkpoints").glob(".tmp-*"))
    summary = json.loads((one / "summary.json").read_text())
    assert summary["global_step"] == 6 and summary["unet_params"] == summary["trainable_params"]


def test_exported_unet_loads_into_the_svd_pipeline(resumed_runs, tiny_cache):
    from diffusers import StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel

    from trainers.models import resolve_svd_source

    one = resumed_runs[0]
    cfg = load_config(["model=tiny"])
    base = resolve_svd_source(cfg.model)
    unet = UNetSpatioTemporalConditionModel.from_pretrained(one / "unet")
    pipe = StableVideoDiffusionPipeline.from_pretrained(base, unet=unet)
    base_unet = UNetSpatioTemporalConditionModel.from_pretrained(base, subfolder="unet")
    diff = max((p - q).abs().max().item() for p, q in zip(unet.parameters(), base_unet.parameters()))
    assert diff > 0, "training did not change the U-Net"
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.full((64, 96, 3), 128, np.uint8))
    frames = pipe(
        image,
        height=64,
        width=96,
        num_frames=4,
        num_inference_steps=2,
        decode_chunk_size=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames
    assert np.asarray(frames).shape == (1, 4, 64, 96, 3)


def test_lora_trains_only_adapters_and_exports_merged(tiny_cache, tmp_path):
    from trainers.loop import Trainer

    cfg = load_config(
        COMMON
        + [
            "adapter=lora",
            "schedule=diffusion",
            "train.max_steps=2",
            f"train.out_dir={tmp_path / 'lora'}",
            "train.lr=1e-3",
        ]
    )
    trainer = Trainer(cfg)
    model = trainer.acc.unwrap_model(trainer.unet)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    targets = {"to_q", "to_k", "to_v", "to_out.0"}
    lora_layers = {n.split(".lora_")[0] for n in trainable}
    assert all(any(n.endswith(t) for t in targets) for n in lora_layers)
    # rank 16: A is [16, in], B is [out, 16] for each adapted Linear
    expected = sum(
        16 * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if name in lora_layers and hasattr(m, "in_features")
    )
    assert trainer.n_trainable == expected
    trainer.train()
    weights = _unet_weights(tmp_path / "lora")
    assert not any("lora" in k for k in weights)
    from trainers.models import load_svd

    base = load_svd(cfg.model).unet.state_dict()
    assert weights.keys() == base.keys()
    changed = [k for k in weights if not torch.equal(weights[k], base[k])]
    assert changed and all(any(t in k for t in targets) for k in changed)


def test_non_finite_loss_stops_with_a_clear_message(tiny_cache, tmp_path):
    from trainers.loop import Trainer

    cfg = load_config(
        COMMON + ["schedule=diffusion", "edm.p_mean=1000", "train.max_steps=1", f"train.out_dir={tmp_path / 'nan'}"]
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss_diff .* at step 1 \(epoch 1"):
        Trainer(cfg).train()
    assert not (tmp_path / "nan" / "unet").exists()


def test_bench_step_harness_runs(tiny_cache):
    from benchmark.perf.step import bench

    r = bench(["data.clip_len=4", "train.out_dir=" + str(tiny_cache / "bench")], steps=1)
    assert r["diffusion"]["median_s"] > 0 and r["lsa"]["median_s"] > 0
    assert r["lsa"]["peak_mem_gib"] > 0 and r["lsa_over_diffusion"] > 0
    assert r["setting"]["frames"] == [4, 3, 64, 96]


def test_memory_switches_and_accumulation_run(tiny_cache, tmp_path):
    """bf16 autocast, U-Net gradient checkpointing, checkpointed chunked decoding, frame subsampling
    and gradient accumulation together: one optimizer step of 2 micro-batches on the CPU."""
    from trainers.loop import Trainer

    cfg = load_config(
        COMMON
        + [
            "schedule=joint",
            "train.mixed_precision=bf16",
            "train.grad_checkpointing=true",
            "loss.decode_checkpoint=true",
            "loss.decode_chunk=2",
            "loss.decode_frames=every_k:2",
            "train.grad_accum=2",
            "train.max_steps=1",
            f"train.out_dir={tmp_path / 'mem'}",
        ]
    )
    Trainer(cfg).train()
    log = [json.loads(x) for x in (tmp_path / "mem" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 1 and log[0]["loss_feat"] > 0
    state = json.loads(next((tmp_path / "mem" / "checkpoints").iterdir()).joinpath("trainer_state.json").read_text())
    assert state["micro_step"] == 2 and state["global_step"] == 1
    assert "every_k:2" in (tmp_path / "mem" / "config.yaml").read_text()  # the approximation is recorded
