"""The rehearsal's stand-in networks: random weights, written in the official formats and file names.

`profile=rehearsal` (configs/benchmark/rehearsal.yaml; docs/benchmark.md, "The rehearsal") runs the
paper profile end to end with every input replaced by a stand-in that the real loaders read:

    <benchmark.stand_ins.dir>/
      stable-video-diffusion-img2vid-xt/   diffusers folder of the SVD-xt release, fp16 variant files:
                                           model_index.json, {unet,vae}/diffusion_pytorch_model.fp16.safetensors,
                                           image_encoder/model.fp16.safetensors, feature_extractor/, scheduler/
      dinov2-base/                         transformers folder: config.json, model.safetensors, preprocessor_config.json
      i3d_torchscript.pt                   TorchScript with StyleGAN-V's call (x, rescale, resize, return_features)
      weights-inception-2015-12-05-6726825d.pth   torch-fidelity's FeatureExtractorInceptionV3 state dict
      yolo11x.pt                           ultralytics checkpoint (YOLO11x built from ultralytics' yolo11x.yaml)
      dn_detr_r50_50ep.pth                 detrex checkpoint ({'model': state dict} with detrex's key names)
      STAND_INS.json                       what each file is (random weights, rehearsal only)

`benchmark.stand_ins.networks=full` builds each from its published config (SVD-xt: a 1.5 B-parameter
U-Net, ~4 GB of fp16 files; never in a CPU test); `tiny` builds the smoke profile's tiny networks of
the same classes (trainers.models, metrics.*.make_tiny_*) into the same layout, for the CPU test.
The clips are the synthetic dataset at the configured size (the profile sets 25 x 320 x 512).
Every file is written atomically and once: a present file is kept (delete the folder to rebuild).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from benchmark.stages import select

log = logging.getLogger(__name__)

SIZES = ("full", "tiny")
# The official names (those the paper profile's paths name) of each stand-in inside stand_ins.dir
FILES = {
    "svd": "stable-video-diffusion-img2vid-xt",
    "dino": "dinov2-base",
    "i3d": "i3d_torchscript.pt",
    "inception": "weights-inception-2015-12-05-6726825d.pth",
    "yolo": "yolo11x.pt",
    "dn_detr": "dn_detr_r50_50ep.pth",
}
WHAT = {
    "svd": "SVD img2vid-xt diffusers folder (U-Net, temporal VAE, CLIP ViT-H/14), fp16 variant files",
    "dino": "DINOv2 ViT-B/14 transformers folder",
    "i3d": "I3D (cd-fvd's InceptionI3d, Kinetics-400 head) as TorchScript with StyleGAN-V's call signature",
    "inception": "torch-fidelity FeatureExtractorInceptionV3 state dict",
    "yolo": "ultralytics YOLO11x checkpoint",
    "dn_detr": "detrex DN-DETR R50 checkpoint ({'model': state dict}, detrex key names)",
}


def enabled(cfg) -> bool:
    return bool(select(cfg, "benchmark.rehearsal", False))


def settings(cfg) -> dict:
    """{networks, seed, build_device, dir, num_frames, fvd_frames} of a resolved rehearsal config."""
    s = select(cfg, "benchmark.stand_ins", None)
    if not isinstance(s, dict) or not s.get("dir"):
        raise ValueError("benchmark.rehearsal=true needs benchmark.stand_ins.dir (configs/benchmark/rehearsal.yaml)")
    networks = str(s.get("networks", "full"))
    if networks not in SIZES:
        raise ValueError(f"benchmark.stand_ins.networks={networks!r}; valid: {', '.join(SIZES)}")
    return dict(
        networks=networks,
        seed=int(s.get("seed", 0)),
        build_device=s.get("build_device", "auto"),
        dir=Path(str(s["dir"])).expanduser(),
        num_frames=int(select(cfg, "data.clip_len", 25)),
        fvd_frames=int(select(cfg, "metrics.fvd.num_frames", None) or select(cfg, "data.clip_len", 25)),
        metrics_cache=select(cfg, "metrics.cache_dir", None),
    )


def paths(folder: str | Path) -> dict[str, Path]:
    return {k: Path(folder) / name for k, name in FILES.items()}


def _present(kind: str, path: Path) -> bool:
    if kind in ("svd", "dino"):
        return (path / ("model_index.json" if kind == "svd" else "config.json")).is_file()
    return path.is_file()


def describe(cfg) -> list[str]:
    """--dry-run lines: each stand-in, present or to be written."""
    s = settings(cfg)
    return [
        f"rehearsal stand-in {k:9s} {'present' if _present(k, p) else 'pending'}  {p}"
        for k, p in paths(s["dir"]).items()
    ]


def drop_pending(cfg, report) -> None:
    """--dry-run: the preflight's problems with stand-ins not written yet (benchmark.preflight.Report)
    are dropped; a stand-in that is there is checked like any input."""
    pending = [str(p) for k, p in paths(settings(cfg)["dir"]).items() if not _present(k, p)]
    for problem in list(report.problems):
        if any(str(problem.file).startswith(p) for p in pending):
            del report.problems[problem]


def ensure(cfg, echo=log.info) -> dict[str, float]:
    """Write the missing stand-ins of a rehearsal config; returns {kind: seconds} of those written now."""
    s = settings(cfg)
    folder = s["dir"]
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for kind, path in paths(folder).items():
        if _present(kind, path):
            continue
        echo(f"rehearsal: writing the {s['networks']} stand-in {kind} -> {path}")
        t0 = time.perf_counter()
        WRITERS[kind](path, s)
        made[kind] = time.perf_counter() - t0
        echo(f"rehearsal: {kind} written in {made[kind]:.1f} s")
    manifest = folder / "STAND_INS.json"
    if made or not manifest.is_file():
        from data.atomic import atomic_write_text

        info = {
            "what": "RANDOM weights in the official formats, for profile=rehearsal only (benchmark/rehearsal.py)",
            "networks": s["networks"],
            "seed": s["seed"],
            "num_frames": s["num_frames"],
            "files": {FILES[k]: WHAT[k] for k in FILES},
        }
        atomic_write_text(manifest, json.dumps(info, indent=1))
    return made


# ---------------------------------------------------------------------------------- writers
def _build_device(s: dict) -> str:
    from data.device import resolve_device

    return resolve_device(s["build_device"]) if s["networks"] == "full" else "cpu"


def write_svd(path: Path, s: dict) -> Path:
    """A diffusers StableVideoDiffusionPipeline folder with the fp16 variant files, as the SVD-xt
    release holds them (model.variant=fp16 in the paper profile loads exactly these)."""
    from diffusers import StableVideoDiffusionPipeline

    from data.atomic import publish_dir_once
    from trainers.models import build_full_random_svd, build_tiny_svd

    if s["networks"] == "full":
        parts = build_full_random_svd(s["seed"], s["num_frames"], _build_device(s))
    else:
        parts = build_tiny_svd(s["seed"], s["num_frames"])

    def save(tmp):
        pipe = StableVideoDiffusionPipeline(**parts).to(torch.float16)
        pipe.save_pretrained(tmp, variant="fp16", safe_serialization=True)

    out = publish_dir_once(path, save)
    parts.clear()  # the full-size networks (GBs) go before the next stand-in is built
    _release()
    return out


def write_dino(path: Path, s: dict) -> Path:
    """A transformers Dinov2Model folder with facebook/dinov2-base's preprocessor config beside it."""
    from transformers import BitImageProcessor

    from data.atomic import publish_dir_once
    from trainers.models import build_full_random_dino, build_tiny_dino

    model = (
        build_full_random_dino(s["seed"], _build_device(s)) if s["networks"] == "full" else build_tiny_dino(s["seed"])
    )
    processor = BitImageProcessor(
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        size={"shortest_edge": 256},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    )

    def save(tmp):
        model.to("cpu").save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return publish_dir_once(path, save)


class _StyleGANVCall(torch.nn.Module):
    """StyleGAN-V's i3d_torchscript.pt call around a traced InceptionI3d (the 400 Kinetics logits)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = torch.nn.functional.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        logits = self.net(x)
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


def write_i3d(path: Path, s: dict) -> Path:
    """Full: cd-fvd's InceptionI3d (the network of StyleGAN-V's file) traced at the clip length the
    FVD feeds it ([B, 3, T, 224, 224]; its same-padding is computed from the input shape, which the
    trace fixes), wrapped in StyleGAN-V's call and scripted. Tiny: metrics.fvd.make_tiny_i3d."""
    from data.atomic import atomic_path
    from metrics.fvd import _quiet_jit, make_tiny_i3d

    if s["networks"] == "tiny":
        return _smoke_copy("i3d", path, s) or make_tiny_i3d(path, seed=s["seed"])
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        net = InceptionI3d(400, in_channels=3).eval()
        with torch.no_grad(), _quiet_jit():
            traced = torch.jit.trace(net, torch.zeros(1, 3, s["fvd_frames"], 224, 224))
            scripted = torch.jit.script(_StyleGANVCall(traced).eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, _quiet_jit():
        torch.jit.save(scripted, str(tmp))
    return path


def write_inception(path: Path, s: dict) -> Path:
    """torch-fidelity's InceptionV3 is the same network at every size: its full state dict."""
    from metrics.fid import make_random_inception_weights

    return _smoke_copy("inception", path, s) or make_random_inception_weights(path, seed=s["seed"])


def write_yolo(path: Path, s: dict) -> Path:
    from metrics.detectors.yolo import make_tiny_yolo

    if s["networks"] == "tiny" and (done := _smoke_copy("yolo", path, s)):
        return done
    return make_tiny_yolo(
        path, seed=s["seed"], model_yaml="yolo11x.yaml" if s["networks"] == "full" else "yolo11n.yaml"
    )


# detrex's projects/dn_detr/configs/models/dn_detr_r50.py (as benchmark/perf/harness.py measures it)
DN_DETR_R50 = dict(
    hidden_size=256,
    backbone_channels=2048,
    embedding_size=64,
    depths=[3, 4, 6, 3],
    hidden_sizes=[256, 512, 1024, 2048],
    encoder_layers=6,
    decoder_layers=6,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
    num_queries=300,
    num_classes=80,
    encoder_post_norm=False,
)
DN_DETR_TINY = dict(
    hidden_size=32,
    backbone_channels=128,
    embedding_size=8,
    depths=[1, 1, 1, 1],
    hidden_sizes=[16, 32, 64, 128],
    encoder_layers=1,
    decoder_layers=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_queries=20,
    num_classes=80,
    encoder_post_norm=False,
)


def detrex_state_dict(model, arch) -> dict[str, torch.Tensor]:
    """The inverse of metrics.detectors.convert_dn_detr: a DabDetrForObjectDetection's weights under
    detrex's key names (its rules read backwards), so the converter maps them back exactly. The
    label encoder's rows 0..C-1 (noised-label embeddings, training only) are random."""
    from metrics.detectors.convert_dn_detr import LABEL_ENCODER, build_rules

    target = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    src: dict[str, torch.Tensor] = {}
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    for rule in build_rules(arch):
        t = target[rule.target]
        if rule.op[0] == "copy":
            src[rule.source] = t
        elif rule.op[0] == "chunk":
            chunks.setdefault(rule.source, {})[rule.op[1]] = t
        elif rule.op[0] == "pattern":
            enc = torch.randn(arch.num_classes + 1, arch.hidden_size - 1)
            enc[arch.num_classes] = t[0, :-1]
            src[LABEL_ENCODER] = enc
            target[rule.target][0, -1] = 0.0  # the converter appends the indicator 0
        else:
            raise AssertionError(rule.op)
        for other in rule.same_as:
            src[other] = src[rule.source]
    for key, parts in chunks.items():
        src[key] = torch.cat([parts[i] for i in range(3)], dim=0)
    return src


def write_dn_detr(path: Path, s: dict) -> Path:
    """A detrex-format DN-DETR checkpoint of a random DabDetr (R50 dimensions, or tiny ones); the
    paper profile's loader converts it (metrics.detectors.dn_detr.resolve_weights) as it would
    detrex's dn_detr_r50_50ep.pth."""
    from transformers import DabDetrForObjectDetection

    from data.atomic import atomic_path
    from metrics.detectors.convert_dn_detr import Architecture, dab_detr_config

    arch = Architecture(**(DN_DETR_R50 if s["networks"] == "full" else DN_DETR_TINY))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        model = DabDetrForObjectDetection(dab_detr_config(arch)).eval()
        confident_boxes(model, arch.num_queries)
        state = detrex_state_dict(model, arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)
    return path


CONFIDENT_QUERIES = 5  # references per frame of the stand-in DN-DETR (KITTI Tracking: 4.3 vehicles per frame)


def confident_boxes(model, num_queries: int, car: int = 2) -> None:
    """Make a fresh DabDetr report something the mAP / mIoU code can score: every query says "car"
    with score sigmoid(1) = 0.73 (above the protocol's 0.6 reference cut), the first
    CONFIDENT_QUERIES with boxes of 30-50 % of the frame's sides, the others 2 % boxes (below the
    protocol's size rule). A fresh model's box head outputs zero, so its boxes are its anchors: the
    same boxes on every frame, real or generated (mAP and mIoU 100: the numbers check the machinery)."""
    with torch.no_grad():
        anchors = torch.rand(num_queries, 4) * torch.tensor([0.4, 0.4, 0.2, 0.2]) + torch.tensor([0.3, 0.3, 0.3, 0.3])
        anchors[CONFIDENT_QUERIES:, 2:] = 0.02
        model.model.query_refpoint_embeddings.weight.copy_(torch.logit(anchors))
        model.class_embed.weight.zero_()
        model.class_embed.bias.fill_(-6.0)
        model.class_embed.bias[car] = 1.0


def _smoke_copy(kind: str, path: Path, s: dict) -> Path | None:
    """Tiny networks at seed 0: the smoke profile's files are the same ones (metrics.weights, made once
    in metrics.cache_dir): copied under the official name instead of made again. None otherwise."""
    if s["networks"] != "tiny" or s["seed"] != 0 or not s.get("metrics_cache"):
        return None
    import shutil

    from data.atomic import atomic_path
    from metrics.weights import ensure_smoke_weights

    src = ensure_smoke_weights(s["metrics_cache"])[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)
    return path


WRITERS = {
    "svd": write_svd,
    "dino": write_dino,
    "i3d": write_i3d,
    "inception": write_inception,
    "yolo": write_yolo,
    "dn_detr": write_dn_detr,
}


def _release():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
