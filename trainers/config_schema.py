"""Types and ranges of the config keys: `configs/train.yaml` and its groups (loss, edm, cond, train,
model, data, schedule, adapter), the metrics group and the benchmark profile's own keys.

Plain checks over the resolved config (a DictConfig or the plain dict the benchmark resolves), so
a wrong value fails at start, naming its full dotted key, the value and what is allowed, instead of
deep inside a stage (`train.lr=abc` as a TypeError at the first optimizer step, a negative
`loss.alpha` silently behaving like a positive one). Used by `python -m trainers.train` at start and
by `python -m benchmark.run` (also with --dry-run) for every row of a table before any stage runs.

A rule applies when its key is present: the groups differ in their keys (only `adapter=lora` has a
rank, only `data=kitti|folder|nuscenes` a stride), and a missing key already fails where it is read,
naming it (struct configs). Unknown keys are refused by Hydra itself when they are overridden
(`loss.alfa=3`: "Key 'alfa' is not in struct"). `*` in a rule's key matches every child of a mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from data.cli import UserError


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range; the message names the key, value and range."""


@dataclass(frozen=True)
class Rule:
    key: str  # dotted path; `*` = every child of a mapping
    ok: Callable[[Any], bool]
    allowed: str  # what is allowed, as the error message says it


# ----------------------------------------------------------------------------- value kinds
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num(
    key: str,
    *,
    gt=None,
    ge=None,
    le=None,
    lt=None,
    integer: bool = False,
    null: bool = False,
    multiple_of: int | None = None,
    why: str = "",
) -> Rule:
    """A number (an integer with `integer`) in a range; `null` also allows null."""

    def ok(v):
        if v is None:
            return null
        if not (_is_int(v) if integer else _is_num(v)):
            return False
        return (
            (gt is None or v > gt)
            and (ge is None or v >= ge)
            and (le is None or v <= le)
            and (lt is None or v < lt)
            and (multiple_of is None or v % multiple_of == 0)
        )

    bounds = [
        f"> {gt}" if gt is not None else "",
        f">= {ge}" if ge is not None else "",
        f"< {lt}" if lt is not None else "",
        f"<= {le}" if le is not None else "",
    ]
    text = ("an integer" if integer else "a number") + " " + " and ".join(b for b in bounds if b)
    if multiple_of:
        text += f", a multiple of {multiple_of}" + (f" ({why})" if why else "")
    return Rule(key, ok, text.strip() + (", or null" if null else ""))


def prob(key: str, null: bool = False) -> Rule:
    return num(key, ge=0, le=1, null=null)


def choice(key: str, *values, null: bool = False) -> Rule:
    return Rule(
        key,
        lambda v: v in values or (null and v is None),
        "one of " + " | ".join(map(str, values)) + (", or null" if null else ""),
    )


def boolean(key: str) -> Rule:
    return Rule(key, lambda v: isinstance(v, bool), "true or false")


def text(key: str, null: bool = False) -> Rule:
    return Rule(
        key,
        lambda v: (isinstance(v, str) and v != "") or (null and v is None),
        "a non-empty string" + (", or null" if null else ""),
    )


def pair(key: str, item: Callable[[Any], bool], what: str, null: bool = False, n: int = 2) -> Rule:
    """A list of `n` items, each passing `item`."""

    def ok(v):
        if v is None:
            return null
        return isinstance(v, (list, tuple)) and len(v) == n and all(item(x) for x in v)

    return Rule(key, ok, f"a list of {n} {what}" + (", or null" if null else ""))


def subset(key: str, *values) -> Rule:
    return Rule(
        key,
        lambda v: isinstance(v, (list, tuple)) and all(x in values for x in v),
        f"a list of any of {', '.join(values)}",
    )


def _device(v) -> bool:
    return v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())


def _decode_frames(v) -> bool:
    if v == "all":
        return True
    if isinstance(v, str) and v.startswith("every_k:"):
        k = v.split(":", 1)[1]
        return k.isdigit() and int(k) >= 1
    return False


def _dino_size(v) -> bool:
    return v == "auto" or (
        isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) and x >= PATCH and x % PATCH == 0 for x in v)
    )


# The VAE of SVD (the real one and the tiny one: 4 blocks, 3 downsamplings) makes 1/8-size latents,
# and the SVD pipeline refuses other sizes; the U-Net copes with any latent size (diffusers forwards
# its upsample sizes). DINOv2's patch is 14 px (ViT-B/14, and the tiny model keeps it).
VAE_FACTOR = 8
PATCH = 14
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box")
_pos_int = lambda x: _is_int(x) and x >= 1  # noqa: E731
_nonneg = lambda x: _is_num(x) and x >= 0  # noqa: E731

RULES: list[Rule] = [
    # ---- loss (Eq. 4 and the LSA feature loss)
    choice("loss.variant", "global", "box", "hybrid", "repa", "trd"),
    Rule(
        "loss.align.block", lambda x: isinstance(x, str) and bool(x), "a module name of the U-Net, e.g. down_blocks.1"
    ),
    num("loss.align.projector_dim", ge=1, integer=True),
    num("loss.align.coeff", ge=0),
    num("loss.align.margin", ge=0),
    choice("loss.align.mask", "global", "box", "hybrid"),
    num("loss.alpha", gt=0),
    num("loss.diff_weight", ge=0),
    num("loss.lambda_feat", ge=0),
    Rule("loss.dino_size", _dino_size, f"auto, or [h, w]: positive multiples of {PATCH} (the DINOv2 patch)"),
    pair("loss.dino_mean", _is_num, "numbers", n=3),
    pair("loss.dino_std", lambda x: _is_num(x) and x > 0, "numbers > 0", n=3),
    num("loss.decode_chunk", ge=1, integer=True),
    boolean("loss.decode_checkpoint"),
    boolean("loss.decode_channels_last"),
    Rule("loss.decode_frames", _decode_frames, "all, or every_k:<k> with an integer k >= 1"),
    choice("loss.dino_attention", "sdpa", "eager"),
    boolean("loss.real_feature_cache"),
    choice("loss.feat_reduction", "mean", "patch_sum", "frame_sum"),
    choice("loss.feat_mask", "diff", "squared"),
    choice("loss.decode_checkpoint_level", "chunk", "blocks"),
    choice("loss.decode_attention", "sdpa", "eager"),
    # ---- edm noise levels
    choice("edm.sigma_dist", "lognormal", "uniform_index"),
    num("edm.p_mean"),
    num("edm.p_std", gt=0),
    # ---- conditioning
    num("cond.fps", ge=1, integer=True),
    num("cond.motion_bucket_id", ge=0, integer=True),
    num("cond.noise_aug", ge=0),
    prob("cond.dropout"),
    boolean("cond.frame_noise"),
    choice("cond.latent", "mode", "sample"),
    # ---- train
    num("train.epochs", ge=1, integer=True),
    num("train.max_steps", ge=1, integer=True, null=True),
    num("train.batch_size", ge=1, integer=True),
    num("train.grad_accum", ge=1, integer=True),
    num("train.lr", gt=0),
    num("train.weight_decay", ge=0),
    pair("train.adam_betas", lambda x: _is_num(x) and 0 <= x < 1, "numbers in [0, 1)"),
    boolean("train.adam_fused"),
    num("train.max_grad_norm", gt=0, null=True),
    choice("train.mixed_precision", "no", "bf16", "fp16"),
    boolean("train.grad_checkpointing"),
    subset("train.compile", "unet", "unet_blocks", "vae_decoder", "dino"),
    choice("train.optimizer", "adamw", "adamw8bit", "adamw_offload"),
    choice("train.sdpa_backend", "auto", "flash", "efficient", "cudnn", "math"),
    boolean("train.cudnn_benchmark"),
    num("train.seed", ge=0, integer=True),
    num("train.num_workers", ge=0, integer=True),
    num("train.checkpoint_every", ge=1, integer=True),
    num("train.keep_checkpoints", ge=1, integer=True),
    text("train.resume", null=True),
    text("train.init_from", null=True),
    text("train.out_dir"),
    Rule("train.device", _device, "auto | cpu | cuda | cuda:<index>"),
    choice(
        "train.lr_scheduler",
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
    ),
    num("train.lr_warmup_steps", ge=0, integer=True),
    num("train.lr_schedule_epochs", ge=1, integer=True, null=True),
    boolean("train.ema.enabled"),
    num("train.ema.decay", ge=0, le=1),
    choice("train.report_to", "none", "tensorboard", "wandb"),
    choice("train.wandb_mode", "offline", "online"),
    num("train.validation_every", ge=0, integer=True),
    choice("train.validation.split", "train", "test"),
    num("train.validation.num_videos", ge=1, integer=True),
    num("train.validation.num_inference_steps", ge=1, integer=True),
    num("train.validation.min_guidance_scale", ge=0),
    num("train.validation.max_guidance_scale", ge=0),
    num("train.validation.decode_chunk_size", ge=1, integer=True),
    num("train.validation.seed", ge=0, integer=True),
    # ---- model
    text("model.name"),
    text("model.svd"),
    text("model.dino"),
    num("model.tiny_seed", ge=0, integer=True),
    num("model.tiny_frames", ge=1, integer=True),
    num("model.num_frames", ge=1, integer=True),
    Rule("model.build_device", _device, "auto | cpu | cuda | cuda:<index>"),
    choice("model.backbone", "svd", "ltx"),
    text("model.ltx"),
    text("model.prompt"),
    Rule("model.negative_prompt", lambda v: isinstance(v, str), "a string (may be empty)"),
    num("model.max_sequence_length", ge=1, integer=True),
    num("model.prompt_tokens", ge=1, integer=True),
    num("model.frame_rate", gt=0),
    choice("model.latent", "sample", "mode"),
    num("model.decode_timestep", ge=0, le=1),
    num("model.guidance_scale", ge=0),
    num("model.decode_noise_scale", ge=0, le=1, null=True),
    choice("model.flow.sigma_dist", "logit_normal", "uniform"),
    num("model.flow.logit_mean"),
    num("model.flow.logit_std", gt=0),
    Rule(
        "model.flow.shift",
        lambda v: v is None or v == "auto" or _is_num(v),
        "auto (the pipeline's shift for the clip's latent length), a number, or null (no shift)",
    ),
    # ---- data (every dataset group; keys a group lacks are skipped)
    text("data.name"),
    choice("data.world", "default", "source", "nuscenes", "kitti"),
    num("data.height", ge=VAE_FACTOR, integer=True, multiple_of=VAE_FACTOR, why="the SVD VAE's downsampling"),
    num("data.width", ge=VAE_FACTOR, integer=True, multiple_of=VAE_FACTOR, why="the SVD VAE's downsampling"),
    num("data.clip_len", ge=1, integer=True),
    num("data.stride", ge=1, integer=True),
    num("data.fps", gt=0),
    num("data.target_fps", gt=0),
    choice("data.sampling", "sweeps", "fps"),
    num("data.max_frames", ge=1, integer=True, null=True),
    num("data.lambda_feat", ge=0),
    num("data.min_box_size", ge=0),
    choice("data.interpolation", *RESAMPLE),
    choice("data.boxes", "labels", "detector"),
    num("data.train.window_step", ge=1, integer=True),
    num("data.train.num_clips", ge=1, integer=True),
    num("data.test.num_clips", ge=1, integer=True),
    num("data.test.window_step", ge=1, integer=True, null=True),
    choice("data.test.select", "even", "first"),
    # ---- schedule
    text("schedule.name"),
    num("schedule.feat_from_epoch", ge=1, integer=True, null=True),
    # ---- adapter
    choice("adapter.name", "unet", "lora"),
    num("adapter.rank", ge=1, integer=True),
    num("adapter.lora_alpha", gt=0),
    num("adapter.dropout", ge=0, lt=1),
    choice("adapter.lora_epochs", "lsa", "all"),
    Rule(
        "adapter.target_modules",
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, str) for x in v),
        "a non-empty list of module names",
    ),
    # ---- metrics (composed by the benchmark profiles and metrics.evaluate)
    subset("metrics.metrics", "fvd", "fid", "det"),
    Rule("metrics.device", _device, "auto | cpu | cuda | cuda:<index>"),
    pair("metrics.frame_size", _pos_int, "positive integers [h, w]", null=True),
    choice("metrics.resize_method", *RESAMPLE),
    choice("metrics.fvd.format", "auto", "torchscript", "cdfvd"),
    choice("metrics.fvd.crop", "center", "squash"),
    choice("metrics.fvd.center_interp", "nearest", "nearest-exact", "area", "bilinear", "bicubic"),
    num("metrics.fvd.resolution", ge=1, integer=True),
    num("metrics.fvd.feature_dim", ge=1, integer=True),
    num("metrics.fvd.num_frames", ge=1, integer=True, null=True),
    num("metrics.fvd.batch_size", ge=1, integer=True),
    num("metrics.fid.feature_dim", ge=1, integer=True),
    boolean("metrics.fid.antialias"),
    choice("metrics.fid.protocol", "torchmetrics", "pytorch_fid", "clean_fid"),
    num("metrics.fid.batch_size", ge=1, integer=True),
    choice("metrics.det.reference", "detector", "dataset"),
    choice("metrics.det.miou", "hungarian_ref", "matched_mean"),
    prob("metrics.det.miou_match_iou"),
    pair("metrics.det.frame_size", _pos_int, "positive integers [h, w]", null=True),
    choice("metrics.det.resize_method", *RESAMPLE),
    boolean("metrics.det.plot"),
    text("metrics.det.detector.name"),
    num("metrics.det.detector.imgsz", ge=1, integer=True),
    prob("metrics.det.detector.min_conf"),
    prob("metrics.det.detector.nms_iou"),
    num("metrics.det.detector.max_det", ge=1, integer=True),
    num("metrics.det.detector.batch_size", ge=1, integer=True),
    boolean("metrics.det.detector.half"),
    boolean("metrics.det.protocols.*.class_aware"),
    prob("metrics.det.protocols.*.ref_conf"),
    prob("metrics.det.protocols.*.pred_conf"),
    prob("metrics.det.protocols.*.miou_pred_conf"),
    pair("metrics.det.protocols.*.min_box_px", _nonneg, "numbers >= 0 [w, h]", null=True),
    pair(
        "metrics.det.protocols.*.min_box_frac",
        lambda x: _is_num(x) and 0 <= x <= 1,
        "numbers in [0, 1] [w, h]",
        null=True,
    ),
    num("metrics.det.protocols.*.max_frames", ge=1, integer=True, null=True),
    choice("metrics.det.protocols.*.ap", "coco", "ctrlv"),
    # ---- the benchmark profile's own keys (configs/benchmark/<profile>.yaml)
    num("benchmark.num_test_clips", ge=1, integer=True),
    # (benchmark.shards is checked where it is read: benchmark/shards.stage_shards)
    num("benchmark.generate.num_frames", ge=1, integer=True),
    num("benchmark.generate.height", ge=VAE_FACTOR, integer=True, multiple_of=VAE_FACTOR, why="the SVD pipeline's VAE"),
    num("benchmark.generate.width", ge=VAE_FACTOR, integer=True, multiple_of=VAE_FACTOR, why="the SVD pipeline's VAE"),
    num("benchmark.generate.num_inference_steps", ge=1, integer=True),
    num("benchmark.generate.min_guidance_scale", ge=0),
    num("benchmark.generate.max_guidance_scale", ge=0),
    num("benchmark.generate.decode_chunk_size", ge=1, integer=True),
    num("benchmark.generate.seed", ge=0, integer=True),
    # (benchmark.seeds is checked where it is read: benchmark/stages.table_seeds)
    num("benchmark.seed_stride", ge=1, integer=True),
    boolean("benchmark.intervals"),
    num("benchmark.bootstrap.n_resamples", ge=1, integer=True),
    num("benchmark.bootstrap.per_frame_resamples", ge=0, integer=True),
    num("benchmark.bootstrap.confidence", gt=0, lt=1),
    num("benchmark.bootstrap.seed", ge=0, integer=True),
    choice("benchmark.provenance", "record", "strict"),
    # ---- the Ctrl-V baseline (configs/ctrlv)
    num("ctrlv.bbox_train.lr", gt=0, null=True),
    num("ctrlv.bbox_train.dropout", ge=0, lt=1, null=True),
    boolean("ctrlv.inference.bbox.best_of_gt"),
]


# ----------------------------------------------------------------------------- checking
def _plain(cfg) -> Any:
    """A DictConfig as plain containers (interpolations resolved); a dict as it is."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover (omegaconf comes with hydra)
        return cfg
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _values(cfg, parts: list[str], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(full dotted key, value) for every present key matching the path `parts` (`*` = any child)."""
    if not parts:
        yield prefix, cfg
        return
    if not isinstance(cfg, dict):
        return
    head, rest = parts[0], parts[1:]
    keys = list(cfg) if head == "*" else ([head] if head in cfg else [])
    for k in keys:
        yield from _values(cfg[k], rest, f"{prefix}.{k}" if prefix else str(k))


def problems(cfg) -> list[str]:
    """One line per bad value: `key=value: expected <what is allowed>`; [] when the config is valid."""
    cfg = _plain(cfg)
    out = []
    for rule in RULES:
        for key, value in _values(cfg, rule.key.split(".")):
            if not rule.ok(value):
                out.append(f"{key}={value!r}: expected {rule.allowed}")
    out += _cross_checks(cfg)
    return out


def _cross_checks(cfg: dict) -> list[str]:
    """Rules between keys."""
    out = []
    det = (cfg.get("metrics") or {}).get("det") if isinstance(cfg.get("metrics"), dict) else None
    if isinstance(det, dict) and "protocol" in det and isinstance(det.get("protocols"), dict):
        if det["protocol"] not in det["protocols"]:
            out.append(
                f"metrics.det.protocol={det['protocol']!r}: expected one of "
                f"{' | '.join(det['protocols'])} (the keys of metrics.det.protocols)"
            )
    gen = (cfg.get("benchmark") or {}).get("generate") if isinstance(cfg.get("benchmark"), dict) else None
    if isinstance(gen, dict) and _is_num(gen.get("min_guidance_scale")) and _is_num(gen.get("max_guidance_scale")):
        if gen["min_guidance_scale"] > gen["max_guidance_scale"]:
            out.append(
                f"benchmark.generate.min_guidance_scale={gen['min_guidance_scale']!r}: expected <= "
                f"benchmark.generate.max_guidance_scale ({gen['max_guidance_scale']!r})"
            )
    t = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    if t.get("lr_scheduler") == "constant" and _is_int(t.get("lr_warmup_steps")) and t["lr_warmup_steps"] > 0:
        out.append(
            f"train.lr_warmup_steps={t['lr_warmup_steps']!r}: expected 0 with train.lr_scheduler=constant "
            "(it has no warm-up; use train.lr_scheduler=constant_with_warmup)"
        )
    return out


def validate(cfg, where: str = "") -> None:
    """Raise ConfigError listing every bad value (one line each); `where` (e.g. "table III row LSA")
    starts each line."""
    found = problems(cfg)
    if found:
        lead = f"{where}: " if where else ""
        raise ConfigError("\n".join(f"{lead}{p}" for p in found))


def compose_error(e: Exception, overrides) -> ConfigError:
    """Hydra's composition error as one clear line. For an override of a key the config lacks, Hydra
    suggests `+key=value`, which would add a key nothing reads: say instead that the key is unknown."""
    import re

    msg = str(e)
    m = re.match(r"Could not override '([^']+)'", msg)
    if m:
        return ConfigError(
            f"{m.group(1)}: no such config key (an override can only change a key of the composed "
            f"config; check its spelling against configs/train.yaml and the groups in configs/)"
        )
    return ConfigError(f"composing the config with overrides {list(overrides)} failed: {' '.join(msg.split())}")
