"""Training tracking (trainers/tracking.py, trainers/validation.py), learning-rate schedules and EMA
(trainers/optim.py, trainers/ema.py) on tiny models: what the trackers hold, read back from their
files, and a resumed run with EMA and a decaying schedule equal to an uninterrupted one."""

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from data.video_io import read_video
from trainers.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# diffusion-only (no DINOv2 pass): the cheapest real step; 2 clips of 4 frames = 2 steps per epoch
COMMON = [
    "model=tiny",
    "data=synthetic",
    "data.train.num_clips=2",
    "data.test.num_clips=1",
    "data.clip_len=4",
    "schedule=diffusion",
    "train.epochs=2",
    "train.checkpoint_every=100",
]
FAST_VALIDATION = ["train.validation.num_videos=1", "train.validation.num_inference_steps=2"]


def _train(out_dir, *overrides, env=None):
    env = dict(os.environ, TQDM_DISABLE="1", WANDB_SILENT="true", **(env or {}))
    cmd = [sys.executable, "-m", "trainers.train", *COMMON, f"train.out_dir={out_dir}", *overrides]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _need(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the `tracking` extra: pip install -e .[tracking])")


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_holds_config_loss_terms_and_a_validation_video(tiny_cache, tmp_path):
    _need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    run = tmp_path / "tb"
    _train(
        run,
        "train.max_steps=2",
        "train.report_to=tensorboard",
        "train.validation_every=2",
        *FAST_VALIDATION,
        "loss.alpha=7.5",
    )
    ea = EventAccumulator(str(run / "lsa"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    ea.Reload()
    # the full resolved config, as text: a key far from the defaults' top (loss.alpha) with its override
    config = make_ndarray(ea.Tensors("config/text_summary")[0].tensor_proto).item().decode()
    parsed = OmegaConf.create("\n".join(ln[4:] for ln in config.splitlines()))
    assert parsed.loss.alpha == 7.5 and parsed.train.report_to == "tensorboard"
    assert parsed.train.out_dir == str(run) and parsed.model.name == "tiny"
    # every loss term, the objective's weights, lr and gradient norm, per optimizer step, as in log.jsonl
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for tag in ("loss", "loss_diff", "w_diff", "w_feat", "lr", "grad_norm", "sigma"):
        events = ea.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        assert [e.value for e in events] == pytest.approx([r[tag] for r in log], rel=1e-6), tag
    assert all(r["grad_norm"] > 0 and r["w_diff"] == 1.0 and r["w_feat"] == 0.0 for r in log)
    # the validation video: an animated image of clip_len frames at the data size, and the mp4 beside it
    from PIL import Image

    (image,) = ea.Images("validation/00")
    assert (image.step, image.width, image.height) == (2, 96, 64)
    gif = Image.open(io.BytesIO(image.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 4
    mp4 = run / "validation" / "step-00000002" / "00.mp4"
    frames = read_video(mp4)
    assert frames.shape == (4, 64, 96, 3)
    gif.seek(0)
    first = np.asarray(gif.convert("RGB"), dtype=np.float32)
    assert np.abs(first - frames[0]).mean() < 12, "the GIF and the mp4 show different videos"


def test_validation_does_not_change_the_trained_weights(tiny_cache, tmp_path):
    """Validation generates with its own generators and no gradients: same weights with it on or off."""
    a, b = tmp_path / "off", tmp_path / "on"
    _train(a, "train.max_steps=2")
    _train(b, "train.max_steps=2", "train.validation_every=1", *FAST_VALIDATION)
    wa, wb = (load_file(str(r / "unet" / "diffusion_pytorch_model.safetensors")) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in (b / "validation").iterdir()) == ["step-00000001", "step-00000002"]


# ------------------------------------------------------------------------------ Weights & Biases
def _wandb_records(path: Path):
    """The protobuf records of an offline run's `.wandb` file (LevelDB log framing: a 7-byte file
    header, 32 KiB blocks, a 7-byte header per record piece: crc, length, FULL/FIRST/MIDDLE/LAST)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    d, pos, buf, block = path.read_bytes(), 7, b"", 32768
    assert d[:4] == b":W&B"
    while pos + 7 <= len(d):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", d[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        data, pos = d[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = data if kind in (1, 2) else buf + data
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def test_wandb_offline_writes_its_run_folder(tiny_cache, tmp_path):
    _need("wandb")
    run = tmp_path / "wb"
    out = _train(
        run,
        "train.max_steps=1",
        "train.report_to=wandb",
        "train.validation_every=1",
        *FAST_VALIDATION,
        "loss.alpha=7.5",
        env={"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_DISABLE_GIT": "true"},
    )
    (folder,) = (run / "wandb").glob("offline-run-*")
    (records,) = folder.glob("run-*.wandb")
    assert list(folder.glob("files/media/videos/validation/*.mp4")), out[-2000:]
    config, history = {}, {}
    for rec in _wandb_records(records):
        kind = rec.WhichOneof("record_type")
        if kind in ("run", "config"):
            update = rec.run.config.update if kind == "run" else rec.config.update
            config.update({u.key: json.loads(u.value_json) for u in update})
        elif kind == "history":
            history.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in rec.history.item})
    # the full resolved config (flattened), and each logged term of step 1 as log.jsonl has it
    assert config["loss.alpha"] == 7.5 and config["train.report_to"] == "wandb" and config["model.name"] == "tiny"
    (logged,) = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    for key in ("loss", "loss_diff", "lr", "grad_norm", "w_diff"):
        assert history[key] == pytest.approx(logged[key], rel=1e-6), key
    assert history["validation/00/_type"] == "video-file" and history["validation/00/path"].endswith(".mp4")
    assert (folder / "files" / history["validation/00/path"]).stat().st_size == history["validation/00/size"]


# ------------------------------------------------------------------------------ schedules and EMA
def test_lr_schedule_follows_diffusers_and_ignores_the_step_cap():
    from diffusers.optimization import get_scheduler

    from trainers.optim import build_lr_scheduler

    cfg = load_config(["train.lr_scheduler=cosine", "train.lr_warmup_steps=3", "train.epochs=2"])

    def lrs(t, n=10):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
        sched = build_lr_scheduler(opt, t, steps_per_epoch=5)
        out = []
        for _ in range(n):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr()[0])
        return out

    ours = lrs(cfg.train)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    ref = get_scheduler("cosine", optimizer=opt, num_warmup_steps=3, num_training_steps=10)
    want = []
    for _ in range(10):
        opt.step()
        ref.step()
        want.append(ref.get_last_lr()[0])
    assert ours == want and ours[-1] == 0.0 and ours[0] < ours[2]
    capped = load_config(
        ["train.lr_scheduler=cosine", "train.lr_warmup_steps=3", "train.epochs=2", "train.max_steps=4"]
    )
    assert lrs(capped.train, 4) == want[:4]  # a cap stops a run, it does not squeeze the schedule
    longer = load_config(
        ["train.lr_scheduler=cosine", "train.lr_warmup_steps=3", "train.epochs=1", "train.lr_schedule_epochs=2"]
    )
    assert lrs(longer.train) == want


def test_constant_schedule_refuses_a_warmup():
    from trainers.config_schema import ConfigError, validate

    with pytest.raises(ConfigError, match="constant_with_warmup"):
        validate(load_config(["train.lr_warmup_steps=10"]))
    validate(load_config(["train.lr_warmup_steps=10", "train.lr_scheduler=constant_with_warmup"]))


@pytest.fixture(scope="module")
def ema_runs(tiny_cache, tmp_path_factory):
    """4 steps in one go vs 2 steps + a fresh process resuming for 2 more (crossing the epoch end),
    with EMA and a warm-up + cosine schedule on."""
    base = tmp_path_factory.mktemp("ema")
    one, two = base / "one_go", base / "resumed"
    args = ["train.ema.enabled=true", "train.ema.decay=0.9", "train.lr_scheduler=cosine", "train.lr_warmup_steps=2"]
    _train(one, *args, "train.max_steps=4")
    _train(two, *args, "train.max_steps=2")
    out = _train(two, *args, "train.max_steps=4")
    return one, two, out


def _weights(run, name):
    return load_file(str(Path(run) / name / "diffusion_pytorch_model.safetensors"))


def test_resume_with_ema_and_schedule_is_bit_identical(ema_runs):
    one, two, out = ema_runs
    assert "resumed from" in out and "step-00000002" in out
    for name in ("unet", "unet_ema"):
        a, b = _weights(one, name), _weights(two, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: the resumed run diverged"
    la = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in la] == [r["lr"] for r in lb]
    lr = [r["lr"] for r in la]
    # the rate each step used: diffusers' warm-up starts at 0 and reaches train.lr after 2 steps, then the
    # cosine over the run's 2 epochs x 2 steps decays it (a max_steps cap does not shorten it)
    assert lr == pytest.approx([0.0, 5e-6, 1e-5, 5e-6], rel=1e-6)
    summary = json.loads((one / "summary.json").read_text())
    assert summary["unet_ema"] == str(one / "unet_ema")


def test_ema_export_is_the_average_not_the_weights(ema_runs):
    one = ema_runs[0]
    trained, ema = _weights(one, "unet"), _weights(one, "unet_ema")
    moved = [k for k in trained if not torch.equal(trained[k], ema[k])]
    assert len(moved) > len(trained) // 2
    # the checkpoint holds the EMA state beside the weights (what resume restores)
    ckpt = max((one / "checkpoints").iterdir())
    state = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    assert state["optimization_step"] == 4 and state["decay"] == 0.9
    from diffusers import UNetSpatioTemporalConditionModel

    unet = UNetSpatioTemporalConditionModel.from_pretrained(one / "unet_ema")
    shadow = state["shadow_params"]
    params = [p for p in unet.parameters()]
    assert len(params) == len(shadow) and all(torch.equal(p.detach(), s) for p, s in zip(params, shadow))
