"""Performance harness: the LSA step vs the diffusion-only step, full U-Net and LoRA, generation and evaluation.

    python -m benchmark.perf [--steps 5] [--adapters unet,lora] [--sweep] [--gen-videos 0]
                             [--eval-videos 0] [--eval-weights tiny|full-random] [--only steps,generation,evaluation]
                             [--merge] [--out-dir results/perf] [key=value ...]

`key=value` are trainer overrides (configs/train.yaml). On the CPU the default is the tiny model;
at paper scale on a GPU (docs/perf.md):
    python -m benchmark.perf --sweep --gen-videos 2 --eval-videos 50 --eval-weights full-random \\
        model=full-random data.height=320 data.width=512 data.clip_len=25 train.mixed_precision=bf16 \\
        train.grad_checkpointing=true loss.decode_checkpoint=true loss.decode_chunk=5 train.adam_fused=true

`model=full-random` builds SVD (U-Net, temporal VAE, CLIP ViT-H/14) and DINOv2 ViT-B/14 at full
size with random weights, and `--eval-weights full-random` the I3D, InceptionV3, YOLO11x and DN-DETR
R50 at full size: exactly the time and memory of the trained networks (their outputs are noise).
`--sweep` re-times the LSA step with each memory/speed switch flipped in turn. Writes
results/perf/<device>.json and .md naming the device, the versions and every switch used; any
approximation (loss.decode_frames) is part of the recorded setting. `--merge` keeps what an
earlier call wrote to the same file (run the phases as separate processes with `--only`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark.perf.step import bench, device_name, memory_kind, versions
from benchmark.trainer_runner import release_memory
from data.atomic import atomic_write_json, atomic_write_text
from data.cli import command

PHASES = ("steps", "generation", "evaluation")
TEST_VIDEOS = 200  # the paper's test set size that generation and evaluation times are scaled to


def device_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:60] or "device"


def _train_cfg(overrides: list[str]):
    from trainers.config import load_config

    return load_config(["model=tiny", *overrides])


# ------------------------------------------------------------------------------ generation


def time_generation(overrides: list[str], n_videos: int) -> dict:
    """Generate n_videos with the SVD pipeline at the configured size (tiny / full-random / real SVD)."""
    from omegaconf import OmegaConf

    from benchmark.generate import generate_videos, load_pipeline

    cfg = _train_cfg(overrides)
    device = "cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    if cfg.model.svd == "full-random":
        # random weights generate noise, but in exactly the time the trained SVD takes
        from diffusers import StableVideoDiffusionPipeline

        from trainers.models import build_full_random_svd

        pipe = StableVideoDiffusionPipeline(**build_full_random_svd(num_frames=cfg.data.clip_len, device=device))
        pipe = pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = load_pipeline(cfg.model, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    gen = OmegaConf.create(
        dict(
            height=cfg.data.height,
            width=cfg.data.width,
            num_frames=cfg.data.clip_len,
            num_inference_steps=int(os.environ.get("LSA_PERF_GEN_STEPS", 50)),
            fps=cfg.cond.fps,
            motion_bucket_id=cfg.cond.motion_bucket_id,
            noise_aug_strength=cfg.cond.noise_aug,
            min_guidance_scale=1.0,
            max_guidance_scale=3.0,
            decode_chunk_size=8,
            seed=0,
            save_mp4=False,
        )
    )
    firsts = [np.full((cfg.data.height, cfg.data.width, 3), 100 + k, np.uint8) for k in range(n_videos)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t = generate_videos(pipe, firsts, [f"v{k}" for k in range(n_videos)], gen, tmp)
    t.update(
        num_inference_steps=gen.num_inference_steps,
        build_s=build_s,
        dtype=str(dtype).replace("torch.", ""),
        frames=[int(cfg.data.clip_len), int(cfg.data.height), int(cfg.data.width)],
        model=cfg.model.name,
        decode_chunk_size=gen.decode_chunk_size,
        guidance="1 -> 3 (classifier-free, batch of 2)",
    )
    if device == "cuda":
        t["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    t["hours_per_200_videos"] = t["seconds_per_video"] * TEST_VIDEOS / 3600 if t["seconds_per_video"] else None
    del pipe
    release_memory()
    return t


# ------------------------------------------------------------------------------ evaluation


def make_full_size_metric_weights(folder: str | Path) -> dict[str, str]:
    """Randomly initialised full-size evaluation networks of the real classes, saved where the metric
    loaders read real weights from: cd-fvd's InceptionI3d (state dict), torch-fidelity's InceptionV3,
    ultralytics YOLO11x (.pt) and a DN-DETR R50 DabDetr folder (detrex dn_detr_r50 dimensions)."""
    from data.atomic import save_pretrained_atomic
    from metrics.detectors.convert_dn_detr import Architecture, dab_detr_config
    from metrics.detectors.yolo import make_tiny_yolo
    from metrics.fid import make_random_inception_weights

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    torch.manual_seed(0)
    out["i3d"] = folder / "i3d_random_cdfvd.pt"
    torch.save(InceptionI3d(400, in_channels=3).state_dict(), out["i3d"])
    out["inception"] = make_random_inception_weights(folder / "inception_random.pth")
    out["yolo"] = make_tiny_yolo(folder / "yolo11x_random.pt", model_yaml="yolo11x.yaml")
    from transformers import DabDetrForObjectDetection

    from benchmark.rehearsal import DN_DETR_R50

    arch = Architecture(**DN_DETR_R50)
    out["dn_detr"] = save_pretrained_atomic(
        DabDetrForObjectDetection(dab_detr_config(arch)).eval(), folder / "dn_detr_r50_random"
    )
    return {k: str(v) for k, v in out.items()}


def synthetic_video_pairs(n: int, T: int, H: int, W: int, seed: int = 0):
    """n (real, generated) uint8 [T,H,W,3] pairs of smooth random frames (the time of the metrics does
    not depend on what the frames show; the 'generated' one is the real one plus noise)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    real, gen = [], []
    for _ in range(n):
        low = torch.rand(T, 3, max(1, H // 32), max(1, W // 32), generator=g)
        v = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
        noisy = (v + 0.05 * torch.randn(v.shape, generator=g)).clamp(0, 1)
        real.append((v * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy())
        gen.append((noisy * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy())
    return real, gen


# KITTI Tracking labels: 4.3 vehicles per frame on average. Trained detectors see
# about that many above the 0.6 reference score; at min_conf 0.001 they return up to max_det boxes.
REFS_PER_FRAME = 5
PREDS_PER_FRAME = 300


def synthetic_detections(
    n_videos: int,
    T: int,
    H: int,
    W: int,
    classes,
    refs_per_frame: int = REFS_PER_FRAME,
    preds_per_frame: int = PREDS_PER_FRAME,
    seed: int = 0,
):
    """Per video, per frame (references, predictions) shaped like a trained detector's output on
    traffic frames: `refs_per_frame` confident boxes, and `preds_per_frame` predictions (jittered
    copies of the references plus low-score clutter)."""
    from metrics.detectors.base import Detections

    rng = np.random.default_rng(seed)
    classes = np.asarray(list(classes or [2]), np.int64)

    def boxes(n):
        wh = rng.uniform(20, min(H, W) * 0.6, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([W, H]) - wh)
        return np.concatenate([xy, xy + wh], 1).astype(np.float32)

    videos = []
    for _ in range(n_videos):
        refs, preds = [], []
        for _ in range(T):
            rb, rl = boxes(refs_per_frame), rng.choice(classes, refs_per_frame)
            refs.append(Detections(rb, rng.uniform(0.6, 1.0, refs_per_frame).astype(np.float32), rl))
            k = min(preds_per_frame, 5 * refs_per_frame)
            jit = np.repeat(rb, 5, 0)[:k] + rng.normal(0, 4, (k, 4)).astype(np.float32)
            pb = np.concatenate([jit, boxes(preds_per_frame - k)])
            pl = np.concatenate([np.repeat(rl, 5)[:k], rng.choice(classes, preds_per_frame - k)])
            ps = np.concatenate([rng.uniform(0.3, 1.0, k), rng.uniform(0.001, 0.3, preds_per_frame - k)])
            preds.append(Detections(pb, ps.astype(np.float32), pl))
        videos.append((refs, preds))
    return videos


def time_detection_metrics(det_cfg, n_videos: int, T: int, H: int, W: int) -> dict:
    """mAP / mIoU bookkeeping (pycocotools through torchmetrics, Hungarian matching; CPU) on
    detections shaped like a trained detector's. Random full-size detectors return ~300 confident
    boxes per frame, which makes COCO matching O(300^2) per frame: a cost no trained detector has."""
    from metrics.detection import DetectionAccumulator, DetProtocol

    protocol = DetProtocol.from_cfg(det_cfg)
    videos = synthetic_detections(n_videos, T, H, W, protocol.classes)
    t0 = time.perf_counter()
    acc = DetectionAccumulator(protocol)
    for refs, preds in videos:
        acc.add_video(refs, preds, (H, W))
    acc.compute()
    return dict(
        seconds=time.perf_counter() - t0,
        refs_per_frame=REFS_PER_FRAME,
        preds_per_frame=PREDS_PER_FRAME,
        n_frames=n_videos * T,
        protocol=protocol.name,
    )


def _detection_counts(part: dict, ref_conf: float) -> dict:
    refs = [d for refs, _, _ in part["detections"] for d in refs]
    preds = [d for _, preds, _ in part["detections"] for d in preds]
    return dict(
        refs_above_ref_conf_per_frame=float(np.mean([(np.asarray(d.scores) >= ref_conf).sum() for d in refs])),
        preds_per_frame=float(np.mean([len(d.scores) for d in preds])),
    )


def time_evaluation(overrides: list[str], n_videos: int, weights: str = "tiny") -> dict:
    """The evaluation of n_videos synthetic pairs at the configured video size, timed in its parts:
    the networks (I3D, InceptionV3, YOLO11 in one pass, DN-DETR in a second: Table V scores both
    detectors) on the GPU, the Frechet distances, and the detection metrics on detections shaped
    like a trained detector's (`time_detection_metrics`). Scaled to the 200 test videos."""
    from metrics.evaluate import extract_features, load_config, merge_features

    cfg = _train_cfg(overrides)
    T, H, W = int(cfg.data.clip_len), int(cfg.data.height), int(cfg.data.width)
    real, gen = synthetic_video_pairs(n_videos, T, H, W)
    out = dict(n_videos=n_videos, frames=[T, H, W], weights=weights, passes={})
    with tempfile.TemporaryDirectory() as tmp:
        if weights == "full-random":
            t0 = time.perf_counter()
            w = make_full_size_metric_weights(tmp)
            out["make_weights_s"] = time.perf_counter() - t0
            profile = "paper"
            yolo = [
                f"fvd.weights={w['i3d']}",
                "fvd.format=cdfvd",
                f"fid.weights={w['inception']}",
                f"det.detector.weights={w['yolo']}",
            ]
            dn = [f"det.detector.weights={w['dn_detr']}"]
        elif weights == "tiny":
            profile, yolo, dn = "smoke", [f"cache_dir={tmp}"], [f"cache_dir={tmp}", "det.detector.weights=tiny"]
        else:
            raise ValueError(f"--eval-weights={weights!r}: valid are tiny, full-random")
        passes = {
            "fvd+fid+yolo11": ["metrics=[fvd,fid,det]", *yolo],
            "dn_detr": ["metrics=[det]", "det.detector.name=dn_detr", *dn],
        }
        for name, ov in passes.items():
            mcfg = load_config(profile, ov)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            part = extract_features(real, gen, mcfg, progress=True)
            wall = time.perf_counter() - t0
            networks_s = {m: float(v) for m, v in part["seconds"].items()}
            p = dict(
                networks_s=networks_s,
                setup_s=wall - sum(networks_s.values()),
                device=part["device"],
                detector=part["info"].get("det", {}).get("detector"),
                frame_size=list(mcfg.frame_size) if mcfg.frame_size else None,
                det_frame_size=list(mcfg.det.frame_size) if mcfg.det.frame_size else None,
            )
            if torch.cuda.is_available():
                p["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            frechet = [m for m in part["metrics"] if m != "det"]
            if frechet:
                t0 = time.perf_counter()
                merge_features([dict(part, metrics=frechet)], mcfg)
                p["frechet_s"] = time.perf_counter() - t0
            p["det_metric"] = time_detection_metrics(mcfg.det, n_videos, T, *(mcfg.det.frame_size or (H, W)))
            p["detections_of_these_weights"] = _detection_counts(
                part, float(mcfg.det.protocols[mcfg.det.protocol].ref_conf)
            )
            per_video = sum(networks_s.values()) + p["det_metric"]["seconds"]
            # per-video work scales with N; model loading and the Frechet distances do not
            p["hours_per_200_videos"] = (
                per_video * TEST_VIDEOS / n_videos + p["setup_s"] + p.get("frechet_s", 0)
            ) / 3600
            out["passes"][name] = p
            del part
            release_memory()
    out["hours_per_200_videos"] = sum(p["hours_per_200_videos"] for p in out["passes"].values())
    return out


# ------------------------------------------------------------------------------ the harness


def run(
    overrides: list[str],
    steps: int,
    adapters: list[str],
    gen_videos: int,
    sweep: bool = False,
    eval_videos: int = 0,
    eval_weights: str = "tiny",
    phases=PHASES,
    sweep_steps: int = 3,
    label: str | None = None,
    sweep_only: list[str] | None = None,
    profile_decoder: bool = False,
    warmup: int = 1,
) -> dict:
    """`label` names the rows of this call's steps (`<adapter> (<label>)`), so a second setting of the
    same adapter, e.g. with extra switches, sits beside the first in one result file."""
    label_suffix = f" ({label})" if label else ""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {
        "device": device_name(device),
        "versions": versions(),
        "overrides": overrides,
        "memory_kind": memory_kind(device),
    }
    if "steps" in phases:
        results["steps"] = {}
        for adapter in adapters:
            first = adapter == adapters[0]
            r = bench(
                [f"adapter={adapter}", *overrides],
                steps,
                sweep=sweep and first,
                sweep_steps=sweep_steps,
                sweep_only=sweep_only,
                profile_decoder=profile_decoder and first,
                warmup=warmup,
            )
            batch = r["setting"]["batch"]
            for kind in ("diffusion", "lsa"):
                r[kind]["clips_per_s"] = batch / r[kind]["median_s"]
            results["steps"][f"{adapter}{label_suffix}"] = r
            release_memory()
            print(
                f"steps, {adapter}: diffusion {r['diffusion']['median_s']:.3f} s, LSA {r['lsa']['median_s']:.3f} s "
                f"({r['lsa_over_diffusion']:.2f}x), LSA peak {r['lsa']['peak_mem_gib']:.2f} GiB",
                flush=True,
            )
    if "generation" in phases and gen_videos:
        results["generation"] = time_generation(overrides, gen_videos)
    if "evaluation" in phases and eval_videos:
        results["evaluation"] = time_evaluation(overrides, eval_videos, eval_weights)
    return results


def split_list(text: str) -> list[str]:
    """Split at commas outside brackets: 'a,b=[1,2]' -> ['a', 'b=[1,2]']."""
    return [x for x in re.split(r",(?![^\[]*\])", text) if x]


def _gib(v):
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def markdown(res: dict) -> str:
    v = res["versions"]
    lines = [
        f"# LSA-Bench performance on {res['device']}",
        "",
        f"torch {v['torch']}, diffusers {v['diffusers']}, transformers {v.get('transformers', '?')}"
        f"{', CUDA ' + v['cuda'] if v.get('cuda') else ''}; memory = {res['memory_kind']}",
        "",
    ]
    if res.get("steps"):
        # the adapter that was swept (the full U-Net) sets the baseline; JSON may have reordered the keys
        first = next((r for r in res["steps"].values() if r.get("sweep")), next(iter(res["steps"].values())))
        lines += [
            f"## Training step (median of {first['setting']['steps']} after 1 warm-up; forward + backward + AdamW)",
            "",
            f"overrides: `{' '.join(first['setting']['overrides'])}`",
            "",
            "| adapter | step | median (s) | clips/s | peak allocated (GiB) | peak reserved (GiB) | LSA / diffusion |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for adapter, r in res["steps"].items():
            for kind in ("diffusion", "lsa"):
                ratio = f"{r['lsa_over_diffusion']:.2f}x" if kind == "lsa" else ""
                lines.append(
                    f"| {adapter} | {kind} | {r[kind]['median_s']:.3f} | {r[kind]['clips_per_s']:.2f} | "
                    f"{_gib(r[kind]['peak_mem_gib'])} | {_gib(r[kind].get('peak_reserved_gib'))} | {ratio} |"
                )
        lines += ["", f"setting: `{json.dumps({k: x for k, x in first['setting'].items() if k != 'overrides'})}`"]
        base = set(first["setting"]["overrides"])
        for key, r in res["steps"].items():
            extra = [o for o in r["setting"]["overrides"] if o not in base and not o.startswith("adapter=")]
            if extra:
                lines.append(f"`{key}` adds: `{' '.join(extra)}`")
        for key, r in res["steps"].items():
            if not r.get("sweep"):
                continue
            base = r["lsa"]["median_s"]
            lines += [
                "",
                f"## One switch at a time from `{key}` (LSA step, everything else as in that row)",
                "",
                f"baseline LSA step: {base:.3f} s, peak {_gib(r['lsa']['peak_mem_gib'])} GiB",
                "",
                "| switch | set to | median (s) | vs baseline | / diffusion step | peak allocated (GiB) | note |",
                "|---|---|--:|--:|--:|--:|---|",
            ]
            for row in r["sweep"]:
                if "error" in row:
                    lines.append(f"| `{row['switch']}` | {row['value']} | - | - | - | - | {row['error'][:80]} |")
                elif row.get("optimizer_step"):
                    lines.append(
                        f"| `{row['switch']}` | {row['value']} | {row['median_s']:.4f} | | | | AdamW.step alone |"
                    )
                else:
                    note = (
                        f"first step {row['first_step_s']:.1f} s (compilation)"
                        if row["switch"] == "train.compile"
                        else "approximation"
                        if str(row["value"]).startswith("every_k")
                        else ""
                    )
                    if "grad_cosine" in row:
                        note = (
                            f"approximation: gradient cosine {row['grad_cosine']:.4f} (L_feat term alone "
                            f"{row['feat_grad_cosine']:.4f}), L_feat {row['loss_feat_rel_diff']:.2%} off"
                        )
                    lines.append(
                        f"| `{row['switch']}` | {row['value']} | {row['median_s']:.3f} | "
                        f"{row['median_s'] / base:.2f}x | {row['median_s'] / r['diffusion']['median_s']:.2f}x | "
                        f"{_gib(row['peak_mem_gib'])} | {note} |"
                    )
    for key, r in (res.get("steps") or {}).items():
        p = r.get("decoder_profile")
        if p:
            from benchmark.perf.decoder_profile import markdown_table

            lines += ["", f"## Where the decoder's backward time goes (`{key}`, torch.profiler)", ""]
            lines += [f"not measured: {p['error']}"] if "error" in p else markdown_table(p)
    if "generation" in res:
        g = res["generation"]
        lines += [
            "",
            "## Generation",
            "",
            f"{g['generated']} videos of {'x'.join(map(str, g.get('frames', [])))} ({g.get('dtype', '?')}, "
            f"{g['num_inference_steps']} Euler steps, guidance {g.get('guidance', '?')}): "
            f"{g['seconds_per_video']:.2f} s/video -> **{g['hours_per_200_videos']:.3f} h per 200 videos** "
            f"(scaled from {g['generated']}); peak {_gib(g.get('peak_mem_gib'))} GiB",
        ]
    if "evaluation" in res:
        e = res["evaluation"]
        lines += [
            "",
            "## Evaluation",
            "",
            f"{e['n_videos']} synthetic real/generated pairs of {'x'.join(map(str, e['frames']))}, "
            f"{e['weights']} weights. Networks: seconds over all pairs (I3D and Inception see real and "
            "generated videos; the detector real (references) and generated frames). Detection metrics: "
            f"mAP/mIoU on as many frames of detections shaped like a trained detector's. Scaled to "
            f"{TEST_VIDEOS} videos, model loading and Frechet counted once.",
            "",
            "| pass | networks (s) | Frechet (s) | detection metrics (s) | set-up (s) | h per 200 videos |",
            "|---|---|--:|--:|--:|--:|",
        ]
        for name, p in e["passes"].items():
            nets = ", ".join(f"{m} {s:.1f}" for m, s in p["networks_s"].items())
            lines.append(
                f"| {name} | {nets} | {p.get('frechet_s', 0):.1f} | {p['det_metric']['seconds']:.1f} | "
                f"{p['setup_s']:.1f} | {p['hours_per_200_videos']:.3f} |"
            )
        lines += ["", f"**full evaluation of 200 videos (both passes): {e['hours_per_200_videos']:.3f} h**"]
    for note in res.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


@command
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmark.perf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--warmup", type=int, default=1, help="untimed steps before each timing (the first compiles and allocates)"
    )
    ap.add_argument("--adapters", default="unet,lora")
    ap.add_argument("--sweep", action="store_true", help="re-time the LSA step with each switch flipped")
    ap.add_argument("--sweep-steps", type=int, default=3, help="timed steps per flipped switch")
    ap.add_argument(
        "--sweep-only",
        default=None,
        help="comma list of the switches to flip, e.g. loss.decode_frames,train.compile, or of single "
        "rows, e.g. loss.decode_frames=every_k:5 (default: all)",
    )
    ap.add_argument("--gen-videos", type=int, default=0, help="also time generating this many videos")
    ap.add_argument("--eval-videos", type=int, default=0, help="also time evaluating this many video pairs")
    ap.add_argument("--eval-weights", default="tiny", choices=["tiny", "full-random"])
    ap.add_argument("--only", default=",".join(PHASES), help=f"phases to run, of {','.join(PHASES)}")
    ap.add_argument(
        "--profile-decoder",
        action="store_true",
        help="profile the decoder's backward pass (torch.profiler table) for the first adapter",
    )
    ap.add_argument("--label", default=None, help="name this call's step rows '<adapter> (<label>)'")
    ap.add_argument("--merge", action="store_true", help="keep the other phases of an existing result file")
    ap.add_argument("--out-dir", default="results/perf")
    args, overrides = ap.parse_known_args(argv)
    phases = [p for p in args.only.split(",") if p]
    if bad := [p for p in phases if p not in PHASES]:
        ap.error(f"--only: unknown phase(s) {bad}; valid are {','.join(PHASES)}")
    out = Path(args.out_dir)
    stem = out / device_slug(device_name())
    res = run(
        overrides,
        args.steps,
        args.adapters.split(","),
        args.gen_videos,
        args.sweep,
        args.eval_videos,
        args.eval_weights,
        phases,
        args.sweep_steps,
        args.label,
        split_list(args.sweep_only) if args.sweep_only else None,
        args.profile_decoder,
        warmup=args.warmup,
    )
    if args.merge and stem.with_suffix(".json").is_file():
        old = json.loads(stem.with_suffix(".json").read_text())
        steps = old.get("steps", {}) | res.get("steps", {})  # adapters timed in separate calls
        res = old | res  # phases not run in this call keep their earlier figures
        if steps:
            res["steps"] = steps
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stem.with_suffix(".json"), res)
    atomic_write_text(stem.with_suffix(".md"), markdown(res))
    print(markdown(res))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
