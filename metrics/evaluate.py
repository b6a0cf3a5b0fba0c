"""Score generated videos against real ones: FVD, FID and detector mAP / mIoU.

Python:  `from metrics.evaluate import evaluate; evaluate(real_videos, gen_videos, cfg) -> dict`
         videos are uint8 [T,H,W,3] arrays, paths (mp4 or frame folders) or `Clip`s (whose boxes
         serve as the reference when det.reference=dataset); cfg is the `metrics` config node.
CLI:     python -m metrics.evaluate --real DIR --gen DIR --metrics fvd,fid,det --out metrics.json
         videos are paired by name (file stem or folder name).

Everything is streamed video by video (memory stays flat for 200 x 25 frames), feature
extraction and detection are batched and run on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data.cli import InputError, MissingFile, command
from data.device import resolve_device

METRICS = ("fvd", "fid", "det")


# ---------------------------------------------------------------- inputs


def _metrics_node(cfg) -> DictConfig:
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    # a whole experiment config holds the metrics node under `metrics` (a mapping there, a list here)
    if "metrics" in cfg and isinstance(cfg.metrics, DictConfig):
        cfg = cfg.metrics
    return cfg


def _video_name(item, index: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    meta = getattr(item, "meta", None)
    if meta and "scene" in meta:
        return f"#{index} ({meta['scene']})"
    return f"#{index}"


def _load(item, name: str):
    """-> (frames uint8 [T,H,W,3], boxes per frame or None, labels per frame or None)."""
    from data.video_io import read_video

    if isinstance(item, (str, Path)):
        try:
            frames = read_video(item)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise InputError(f"video {name}: cannot be read ({e})") from e
        return frames, None, None
    if hasattr(item, "frames") and hasattr(item, "boxes"):  # a data.Clip
        return np.asarray(item.frames), item.boxes, item.labels
    frames = np.asarray(item)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"video {name}: expected uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    return frames, None, None


def _check_pair(real: np.ndarray, gen: np.ndarray, name: str, expected_t: int | None) -> None:
    if real.shape != gen.shape:
        raise InputError(
            f"video {name}: real is {real.shape[0]} frames of {real.shape[1]}x{real.shape[2]}, "
            f"generated is {gen.shape[0]} frames of {gen.shape[1]}x{gen.shape[2]}; they must match"
        )
    if expected_t is not None and real.shape[0] != expected_t:
        raise InputError(
            f"video {name}: {real.shape[0]} frames, the first pair had {expected_t}; all videos "
            f"must have the same length (per-frame curves, FVD)"
        )


# ---------------------------------------------------------------- building the metrics


def _build(cfg: DictConfig, metrics, weights: dict, device: str, detector):
    built = {}
    if "fid" in metrics:
        from metrics.fid import FIDMetric, InceptionFeatures

        ext = InceptionFeatures(
            weights["fid.weights"],
            device=device,
            batch_size=cfg.fid.batch_size,
            feature_dim=cfg.fid.feature_dim,
            antialias=cfg.fid.antialias,
            protocol=cfg.fid.get("protocol", "torchmetrics"),
        )
        built["fid"] = FIDMetric(ext, cfg.frame_size, cfg.resize_method)
    if "fvd" in metrics:
        from metrics.fvd import FVDMetric, I3DFeatures

        ext = I3DFeatures(weights["fvd.weights"], fmt=cfg.fvd.format, device=device, feature_dim=cfg.fvd.feature_dim)
        built["fvd"] = FVDMetric(
            ext,
            cfg.frame_size,
            cfg.resize_method,
            crop=cfg.fvd.crop,
            resolution=cfg.fvd.resolution,
            center_interp=cfg.fvd.center_interp,
            num_frames=cfg.fvd.num_frames,
            batch_size=cfg.fvd.batch_size,
        )
    if "det" in metrics:
        from metrics.detection import DetProtocol

        protocol = DetProtocol.from_cfg(cfg.det)
        if detector is None:
            from metrics.detectors import build_detector

            det_cfg = OmegaConf.to_container(cfg.det.detector, resolve=True)
            det_cfg.update(cfg.det.protocols[protocol.name].get("detector_overrides") or {})
            det_cfg.update(
                weights=weights["det.detector.weights"],
                classes=list(protocol.classes or []) or None,
                device=device,
                cache_dir=cfg.cache_dir,
            )
            detector = build_detector(det_cfg)
        built["det"] = detector
    return built


def _scale_boxes(boxes, src_hw, dst_hw):
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return [np.asarray(b, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32) for b in boxes]


def _write_detections(path: Path, dets, src_hw, det_hw) -> None:
    """The generated frames' detections, boxes in pixels of the video as stored (for figures)."""
    sy, sx = src_hw[0] / det_hw[0], src_hw[1] / det_hw[1]
    frames = [
        {
            "boxes": (np.asarray(d.boxes, np.float32).reshape(-1, 4) * [sx, sy, sx, sy]).round(2).tolist(),
            "scores": np.asarray(d.scores, np.float32).round(4).tolist(),
            "labels": np.asarray(d.labels).astype(int).tolist(),
        }
        for d in dets
    ]
    from data.atomic import atomic_write_json

    atomic_write_json(path, {"frames": frames}, indent=None)


def _detect_pair(detector, cfg, real, gen, boxes, labels, save_to: Path | None = None):
    """-> (references, predictions, frame size) of one video pair, for DetectionAccumulator.add_video."""
    from metrics.detection import Detections
    from metrics.frames import resize_frames

    size = cfg.det.frame_size
    src_hw = real.shape[1:3]
    real_d = resize_frames(real, size, cfg.det.resize_method)
    gen_d = resize_frames(gen, size, cfg.det.resize_method)
    hw = real_d.shape[1:3]
    if cfg.det.reference == "dataset":
        refs = [Detections(b, np.ones(len(b)), lab) for b, lab in zip(_scale_boxes(boxes, src_hw, hw), labels)]
        preds = detector.detect(gen_d)
    else:
        both = detector.detect(np.concatenate([real_d, gen_d]))  # one batched pass over 2T frames
        refs, preds = both[: len(real_d)], both[len(real_d) :]
    if save_to is not None:
        _write_detections(save_to, preds, src_hw, hw)
    return list(refs), list(preds), tuple(int(v) for v in hw)


# ---------------------------------------------------------------- the entry point


def _check_inputs(cfg: DictConfig, real_videos: Sequence, gen_videos: Sequence) -> list[str]:
    """The metrics to compute; config and input errors before any weights are made or loaded."""
    metrics = list(cfg.metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InputError(f"metrics={metrics}: each must be one of {METRICS}")
    if len(real_videos) != len(gen_videos):
        raise InputError(f"{len(real_videos)} real videos but {len(gen_videos)} generated videos")
    if "det" in metrics:
        from metrics.detection import DetProtocol

        DetProtocol.from_cfg(cfg.det)
        if cfg.det.reference not in ("detector", "dataset"):
            raise InputError(f"det.reference={cfg.det.reference!r}: valid are 'detector', 'dataset'")
    return metrics


def _check_count(metrics, n: int) -> None:
    if n < 2 and set(metrics) & {"fvd", "fid"}:
        raise InputError(f"FVD and FID need at least 2 videos per side (a covariance), got {n}")


def evaluate(
    real_videos: Sequence,
    gen_videos: Sequence,
    cfg,
    names: Sequence[str] | None = None,
    detector=None,
    progress: bool = True,
    detections_dir: str | Path | None = None,
    per_video: str | Path | None = None,
) -> dict:
    """Score `gen_videos[i]` against `real_videos[i]` for every i with the metrics in `cfg.metrics`.

    `detector` overrides the configured one (tests pass a FakeDetector). With `detections_dir`, the
    detections on each generated video are also written to <detections_dir>/<name>.json (frames ->
    boxes/scores/labels in the video's pixels), for figures. With `per_video`, the per-video quantities
    (features, raw detections) are saved there for bootstrap intervals (metrics/per_video.py).
    Returns a JSON-ready dict:
    per metric its value, N, protocol and weights, plus timings (frames/s) and the resolved config.

    The same as `merge_features([extract_features(...)], cfg)`; split the videos into several
    `extract_features` calls (shards, e.g. one per GPU) and merge them for the very same numbers.
    """
    cfg = _metrics_node(cfg)
    _check_count(_check_inputs(cfg, real_videos, gen_videos), len(real_videos))
    part = extract_features(
        real_videos, gen_videos, cfg, names=names, detector=detector, progress=progress, detections_dir=detections_dir
    )
    return merge_features([part], cfg, per_video=per_video)


def extract_features(
    real_videos: Sequence,
    gen_videos: Sequence,
    cfg,
    names: Sequence[str] | None = None,
    detector=None,
    progress: bool = True,
    detections_dir: str | Path | None = None,
) -> dict:
    """The per-video part of `evaluate`: I3D and Inception features and detections of these video
    pairs (any number, even 0 or 1), as a picklable dict for `merge_features`.

    FVD runs I3D on batches of `fvd.batch_size` videos: for results bit-identical to one `evaluate`
    call, every part but the last must hold a multiple of fvd.batch_size videos, in order
    (benchmark/shards.py aligns its shards so). FID features and detections are per video.
    """
    from metrics.weights import resolve_weights

    cfg = _metrics_node(cfg)
    metrics = _check_inputs(cfg, real_videos, gen_videos)
    names = list(names) if names is not None else [_video_name(v, i) for i, v in enumerate(real_videos)]
    weights = resolve_weights(cfg, metrics if detector is None else [m for m in metrics if m != "det"])
    device = resolve_device(cfg.device)
    built = _build(cfg, metrics, weights, device, detector)

    seconds = {m: 0.0 for m in metrics}
    num_frames, video_hw = None, None
    detections = []  # per video: (references, predictions, frame size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for real_item, gen_item, name in tqdm(
            list(zip(real_videos, gen_videos, names)), desc="scoring videos", unit="video", disable=not progress
        ):
            real, boxes, labels = _load(real_item, f"{name} (real)")
            gen, _, _ = _load(gen_item, f"{name} (generated)")
            _check_pair(real, gen, name, num_frames)
            num_frames, video_hw = real.shape[0], real.shape[1:3]
            if "det" in metrics and cfg.det.reference == "dataset" and boxes is None:
                raise InputError(f"video {name}: det.reference=dataset needs Clips with boxes as real videos")
            for m in metrics:
                t0 = time.perf_counter()
                if m == "det":
                    detections.append(
                        _detect_pair(
                            built["det"],
                            cfg,
                            real,
                            gen,
                            boxes,
                            labels,
                            save_to=Path(detections_dir) / f"{name}.json" if detections_dir else None,
                        )
                    )
                else:
                    built[m].update(real, real=True)
                    built[m].update(gen, real=False)
                seconds[m] += time.perf_counter() - t0
        if "fvd" in built:  # the last, partial I3D batch of each side
            t0 = time.perf_counter()
            built["fvd"].flush()
            seconds["fvd"] += time.perf_counter() - t0
    _reemit(caught)
    part = {
        "names": names,
        "metrics": metrics,
        "n_videos": len(names),
        "num_frames": num_frames,
        "video_size": list(map(int, video_hw)) if video_hw else None,
        "device": device,
        "seconds": seconds,
        "warnings": sorted({str(w.message) for w in caught}),
        "weights": weights,
        "features": {},
        "info": {},
    }
    for m in ("fvd", "fid"):
        if m in built:
            part["features"][m] = {"real": list(built[m].features[True]), "gen": list(built[m].features[False])}
    if "fvd" in built:
        part["info"]["fvd"] = {"protocol": built["fvd"].protocol}
    if "fid" in built:
        from metrics.fid import FID_PROTOCOLS

        b = built["fid"]
        size = "x".join(map(str, b.frame_size)) if b.frame_size else "as read"
        if b.extractor.protocol == "torchmetrics":
            to_299 = f"torchmetrics, 299x299 {'antialiased' if b.extractor.net.use_antialias else 'TF1 bilinear'}"
        else:
            to_299 = FID_PROTOCOLS[b.extractor.protocol]
        part["info"]["fid"] = {
            "protocol": (
                f"Inception 2015-12-05 pool3 ({b.extractor.feature_dim}-d), frames {size} ({b.resize_method}), "
                f"then {to_299}"
            ),
            "preprocessing": b.extractor.protocol,
        }
    if "det" in built:
        det = built["det"]
        part["info"]["det"] = {"detector": getattr(det, "name", type(det).__name__)}
        part["detections"] = detections
    return part


def merge_features(parts: Sequence[dict], cfg, per_video: str | Path | None = None) -> dict:
    """`evaluate`'s result from the parts of `extract_features`, in video order (the parts' order):
    features concatenated, then the Frechet distances and the detection accumulator, as one call
    computes them. Timings add up the parts' seconds. With `per_video`, the per-video quantities are
    saved there (metrics/per_video.py: what bootstrap intervals resample)."""
    from metrics.detection import DetectionAccumulator, DetProtocol
    from metrics.frechet import frechet_distance

    cfg = _metrics_node(cfg)
    if not parts:
        raise ValueError("merge_features: no parts")
    metrics = list(parts[0]["metrics"])
    if any(list(p["metrics"]) != metrics for p in parts):
        raise ValueError(f"merge_features: the parts computed different metrics {[p['metrics'] for p in parts]}")
    n = sum(int(p["n_videos"]) for p in parts)
    if n == 0:
        raise InputError("no video to score (every part is empty)")
    _check_count(metrics, n)
    shapes = {(p["num_frames"], tuple(p["video_size"])) for p in parts if p["n_videos"]}
    if len(shapes) > 1:
        raise InputError(
            f"merge_features: the parts' videos differ in length or size {sorted(shapes)}; all videos "
            f"must have the same length (per-frame curves, FVD)"
        )
    first = next(p for p in parts if p["n_videos"])
    num_frames, video_size = first["num_frames"], first["video_size"]
    info = parts[0]["info"]
    seconds = {m: sum(float(p["seconds"][m]) for p in parts) for m in metrics}
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in metrics:
            t0 = time.perf_counter()
            if m == "det":
                acc = DetectionAccumulator(DetProtocol.from_cfg(cfg.det))
                for p in parts:
                    for refs, preds, hw in p["detections"]:
                        acc.add_video(refs, preds, hw, ref_from_dataset=cfg.det.reference == "dataset")
                results["det"] = acc.compute()
            else:
                real, gen = (
                    np.concatenate([a for p in parts for a in p["features"][m][side]]) for side in ("real", "gen")
                )
                r = frechet_distance(real, gen)
                results[m] = {"value": r.value, "n_real": r.n_real, "n_gen": r.n_gen, "dim": r.dim, **info[m]}
            seconds[m] += time.perf_counter() - t0
    _reemit(caught)
    weights = parts[0]["weights"]
    out = {
        "profile": cfg.get("name"),
        "n_videos": n,
        "num_frames": num_frames,
        "video_size": video_size,
        "device": parts[0]["device"],
        **results,
        "timing": {
            m: {
                "seconds": round(seconds[m], 3),
                "frames_per_s": round(2 * n * num_frames / seconds[m], 2) if seconds[m] > 0 else None,
            }
            for m in metrics
        },
        "warnings": sorted(set().union(*(p["warnings"] for p in parts), (str(w.message) for w in caught))),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if "det" in metrics:
        det = out["det"]
        det["detector"] = info["det"]["detector"]
        det["weights"] = weights.get("det.detector.weights")
        det["reference"] = cfg.det.reference
        det["settings"] = OmegaConf.to_container(cfg.det.protocols[det["protocol"]], resolve=True)
    for key, m in (("fvd.weights", "fvd"), ("fid.weights", "fid")):
        if m in out:
            out[m]["weights"] = weights[key]
    if per_video is not None:
        from metrics.per_video import PerVideo

        PerVideo.from_parts(parts).save(per_video)
    return out


def _reemit(caught) -> None:
    """Warnings recorded for the result are still shown to the user, once each."""
    seen = set()
    for w in caught:
        if str(w.message) not in seen:
            seen.add(str(w.message))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# ---------------------------------------------------------------- writing results


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def write_json(result: dict, path: str | Path) -> Path:
    """Atomic: a reader never sees a half-written file."""
    from data.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(_json_safe(result), indent=2, allow_nan=False))


# ---------------------------------------------------------------- CLI


def pair_videos(real_dir: str | Path, gen_dir: str | Path) -> tuple[list[Path], list[Path], list[str]]:
    """Videos (mp4 files or frame folders) of two folders, paired by name; errors name what is unpaired."""
    from data.video_io import is_video

    def listing(folder):
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFile(f"{folder}: not a folder")
        items = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith(".") or not is_video(p):
                continue
            key = p.name if p.is_dir() else p.stem
            if key in items:
                raise InputError(f"{folder}: two videos named {key!r} ({items[key].name}, {p.name})")
            items[key] = p
        if not items:
            raise InputError(f"{folder}: no videos (mp4/avi/mov/mkv/webm files or folders of png/jpg frames)")
        return items

    real, gen = listing(real_dir), listing(gen_dir)
    only_real, only_gen = sorted(set(real) - set(gen)), sorted(set(gen) - set(real))
    if only_real or only_gen:
        show = lambda xs: ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")  # noqa: E731
        raise InputError(
            "unpaired videos: "
            + "; ".join(
                s
                for s in (
                    f"only in {real_dir}: {show(only_real)}" if only_real else "",
                    f"only in {gen_dir}: {show(only_gen)}" if only_gen else "",
                )
                if s
            )
        )
    names = sorted(real)
    return [real[k] for k in names], [gen[k] for k in names], names


def load_config(profile: str = "default", overrides: Sequence[str] = ()) -> DictConfig:
    """The `metrics` config group (configs/metrics/<profile>.yaml, or a YAML file merged over the
    defaults) with `key=value` overrides relative to the metrics node."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    path = Path(profile)
    group = "default" if path.suffix in (".yaml", ".yml") else profile
    # `+key=v` / `++key=v` (a key the YAML lacks, e.g. a DN-DETR-only detector setting) keep their prefix
    hydra_overrides = [f"+metrics={group}"] + [
        f"{o[: len(o) - len(o.lstrip('+'))]}metrics.{o.lstrip('+')}" for o in overrides
    ]
    if GlobalHydra.instance().is_initialized():  # inside a caller's Hydra context: use its search path
        cfg = compose(overrides=hydra_overrides).metrics
    else:
        with initialize_config_module("configs", version_base=None):
            cfg = compose(overrides=hydra_overrides).metrics
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise MissingFile(f"--config {path}: no such file")
        OmegaConf.set_struct(cfg, False)  # a user YAML may add backend-specific keys
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path), OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return cfg


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m metrics.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--real", required=True, help="folder of real videos (mp4 or frame folders)")
    p.add_argument("--gen", required=True, help="folder of generated videos, same names as --real")
    p.add_argument("--metrics", default=None, help="comma list of fvd,fid,det (default: the config's)")
    p.add_argument("--out", required=True, help="JSON file to write (atomically)")
    p.add_argument(
        "--config",
        default="default",
        help="metrics profile: default | paper | smoke (configs/metrics/), or a YAML file",
    )
    p.add_argument("--i3d", help="FVD weights (StyleGAN-V i3d_torchscript.pt or cd-fvd i3d_pretrained_400.pt)")
    p.add_argument("--inception", help="FID weights (torch-fidelity weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--detector", help="detector backend name (yolo11, dn_detr, ...)")
    p.add_argument("--detector-weights", help="detector weights file (e.g. yolo11x.pt)")
    p.add_argument("--protocol", help="detection protocol: lsa (paper) | ctrlv")
    p.add_argument("--fvd-crop", choices=("center", "squash"), help="FVD resize: center (Ctrl-V) | squash (TF FVD)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument(
        "--per-video",
        help="also save the per-video features and detections here (.npz, for "
        "bootstrap intervals: metrics/per_video.py)",
    )
    p.add_argument("--plot", help="PNG of the per-frame mAP/mIoU curves (default: beside --out when det.plot)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config override, relative to the metrics node (e.g. det.protocols.lsa.ref_conf=0.5)",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="DN-DETR: allow full unpickling of a detrex .pth holding more than tensors (trusted files only)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _load_config_or_user_error(profile: str, overrides: Sequence[str]) -> DictConfig:
    """load_config; Hydra's and OmegaConf's complaints about --config / --set are user errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return load_config(profile, overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise InputError(f"--config {profile} / --set {' '.join(overrides)}: {e}") from e


@command
def main(argv=None) -> int:
    args = _parse_args(argv)
    overrides = list(args.set)
    for flag, key in (
        (args.i3d, "fvd.weights"),
        (args.inception, "fid.weights"),
        (args.detector, "det.detector.name"),
        (args.detector_weights, "det.detector.weights"),
        (args.protocol, "det.protocol"),
        (args.fvd_crop, "fvd.crop"),
        (args.device, "device"),
    ):
        if flag:
            quote = '"' if "'" in flag else "'"  # quoted: paths may hold characters Hydra's grammar uses
            overrides.append(f"{key}={quote}{flag}{quote}")
    if args.metrics:
        overrides.append(f"metrics=[{args.metrics}]")
    if args.trust_pickle:
        overrides.append("++det.detector.trust_pickle=true")  # a DN-DETR key: not in the shared node
    cfg = _load_config_or_user_error(args.config, overrides)
    real, gen, names = pair_videos(args.real, args.gen)
    result = evaluate(real, gen, cfg, names=names, progress=not args.quiet, per_video=args.per_video)
    result["real_dir"], result["gen_dir"] = str(Path(args.real).resolve()), str(Path(args.gen).resolve())
    out = write_json(result, args.out)
    if "det" in result and (args.plot or cfg.det.plot):
        from metrics.detection import plot_per_frame

        plot_per_frame(result["det"], args.plot or Path(args.out).with_suffix(".png"))
    summary = {
        m: (result[m]["value"] if m != "det" else {k: result[m][k] for k in ("mAP", "mIoU")})
        for m in METRICS
        if m in result
    }
    print(f"N={result['n_videos']} videos x {result['num_frames']} frames -> {out}: {json.dumps(_json_safe(summary))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
