"""Convert a detrex DN-DETR checkpoint into a transformers `DabDetrForObjectDetection` folder.

    python -m metrics.detectors.convert_dn_detr dn_detr_r50_50ep.pth out_dir [--num-heads 8]

The detrex state dict (under 'model') is mapped key by key (the names below are detrex's and
detectron2's, read from their sources; shapes are checked against the transformers model):

  backbone.stem.conv1[.norm]                 -> ...embedder.embedder.convolution / .normalization
  backbone.res{2-5}.{b}.conv{1-3}[.norm]     -> ...encoder.stages.{0-3}.layers.{b}.layer.{0-2}
  backbone.res{2-5}.0.shortcut[.norm]        -> ...layers.0.shortcut          (FrozenBN buffers)
  input_proj                                 -> model.input_projection
  transformer.encoder.layers.L.attentions.0.attn.in_proj_{weight,bias}
                                             -> model.encoder.layers.L.self_attn.{q,k,v}_proj (rows split 3 ways)
  ...attentions.0.attn.out_proj, norms.0/1, ffns.0.layers.0.0 / .1, ffns.0 PReLU
                                             -> self_attn.out_proj, self_attn_layer_norm / final_layer_norm, fc1 / fc2, activation_fn
  transformer.decoder.layers.L.attentions.0.{query,key}_{content,pos}_proj, value_proj, out_proj
                                             -> model.decoder.layers.L.self_attn.self_attn_*, self_attn.output_proj
  ...attentions.1.* (query_pos_proj in layer 0 only, query_pos_sine_proj)
                                             -> cross_attn.cross_attn_*, cross_attn.output_proj
  transformer.{encoder,decoder}.query_scale, decoder.ref_point_head, ref_anchor_head, post_norm_layer
                                             -> same names, decoder.layernorm
  anchor_box_embed                           -> model.query_refpoint_embeddings
  denoising_generator.label_encoder.weight[num_classes] ++ [0]
                                             -> model.patterns.weight[0] (the shared initial content query)
  class_embed, bbox_embed (== transformer.decoder.bbox_embed)
                                             -> class_embed, bbox_predictor (== model.decoder.bbox_embed)

Every source key is used or on the explicit ignore list (`IGNORED`); rows 0..num_classes-1 of the
label encoder embed noised ground-truth labels in training only and are dropped on purpose. The
converter fails listing unused source keys, missing or extra target keys, wrong shapes, and shared
modules whose two copies differ. The saved folder is reloaded and compared tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.cli import InputError, MissingFile, UserError, command

# Source keys that have no role at inference, each with the reason (documented in docs/dn_detr.md).
IGNORED: dict[str, str] = {
    r"^criterion\.empty_weight$": "class weights of the cross-entropy variant of the loss (training only)",
    r"^backbone\..*\.num_batches_tracked$": "BatchNorm step counter (no effect on frozen BN at inference)",
}
LABEL_ENCODER = "denoising_generator.label_encoder.weight"
# Architecture settings that weights cannot reveal: values of detrex's projects/dn_detr/configs/models/dn_detr_r50.py
DETREX_NUM_HEADS = 8  # encoder/decoder num_heads
DETREX_POS_TEMPERATURE = 20  # PositionEmbeddingSine(temperature=20, normalize=True)
BACKBONE = "model.backbone.conv_encoder.model."


class ConversionError(InputError):
    """The checkpoint does not map onto DabDetrForObjectDetection; the message lists every problem."""


class OutputExists(UserError, FileExistsError):
    """The output folder exists and is not empty (and --overwrite was not given)."""


# Where full unpickling is switched on, by each command that may load a detrex checkpoint
TRUST_PICKLE_ADVICE = (
    "If you trust the file, rerun with --trust-pickle (python -m metrics.detectors.convert_dn_detr "
    "and python -m metrics.evaluate take it), or set det.detector.trust_pickle=true in the metrics "
    "config (python -m benchmark.run: add +metrics.det.detector.trust_pickle=true)"
)


@dataclass
class Rule:
    """target <- transform(source); `same_as` are source keys of a shared module that must be equal."""

    target: str
    source: str
    op: tuple = ("copy",)
    same_as: tuple[str, ...] = ()


@dataclass
class Architecture:
    hidden_size: int
    backbone_channels: int
    embedding_size: int
    depths: list[int]
    hidden_sizes: list[int]
    encoder_layers: int
    decoder_layers: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    num_queries: int
    num_classes: int
    encoder_post_norm: bool
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- loading


def load_detrex_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The 'model' state dict of a detrex / detectron2 checkpoint (.pth), as CPU tensors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: holds Python objects beyond tensors, which safe loading refuses ({e}). {TRUST_PICKLE_ADVICE}"
        ) from e
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{path}: no state dict found (expected a dict with a 'model' entry)")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            try:
                v = torch.as_tensor(v)  # detectron2 .pkl-style numpy arrays
            except Exception as e:
                raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor") from e
        out[k] = v
    return out


# ------------------------------------------------------------------------------ architecture


def _layer_count(src: Mapping, prefix: str) -> int:
    found = {int(m.group(1)) for k in src if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found and found != set(range(max(found) + 1)):
        raise ConversionError(f"layers {sorted(found)} under {prefix!r} are not numbered 0..n-1")
    return len(found)


def infer_architecture(src: Mapping[str, torch.Tensor]) -> Architecture:
    """Sizes read from the tensors' shapes (layer counts, widths, queries, classes)."""
    anchors = [
        "input_proj.weight",
        "anchor_box_embed.weight",
        "class_embed.weight",
        LABEL_ENCODER,
        "backbone.stem.conv1.weight",
        "transformer.encoder.layers.0.ffns.0.layers.0.0.weight",
        "transformer.decoder.layers.0.ffns.0.layers.0.0.weight",
    ]
    absent = [k for k in anchors if k not in src]
    if absent:
        raise ConversionError(f"not a detrex DN-DETR state dict: missing {absent}")
    d, c5 = src["input_proj.weight"].shape[:2]
    stages = sorted({int(m.group(1)) for k in src if (m := re.match(r"backbone\.res(\d+)\.", k))})
    if stages != [2, 3, 4, 5]:
        raise ConversionError(f"backbone stages {[f'res{s}' for s in stages]}; a ResNet has res2..res5")
    depths = [_layer_count(src, f"backbone.res{s}.") for s in stages]
    hidden_sizes = [int(src[f"backbone.res{s}.0.conv3.weight"].shape[0]) for s in stages]
    for s, width in zip(stages, hidden_sizes):
        bottleneck = int(src[f"backbone.res{s}.0.conv1.weight"].shape[0])
        if bottleneck * 4 != width:
            raise ConversionError(
                f"backbone.res{s}: bottleneck width {bottleneck} is not 1/4 of {width}; "
                f"transformers' ResNet bottleneck needs a reduction of 4"
            )
    num_classes = int(src["class_embed.weight"].shape[0])
    label_shape = tuple(src[LABEL_ENCODER].shape)
    if label_shape != (num_classes + 1, d - 1):
        raise ConversionError(
            f"{LABEL_ENCODER} has shape {label_shape}; DN-DETR with the indicator "
            f"(with_indicator=True) has ({num_classes + 1}, {d - 1})"
        )
    return Architecture(
        hidden_size=int(d),
        backbone_channels=int(c5),
        embedding_size=int(src["backbone.stem.conv1.weight"].shape[0]),
        depths=depths,
        hidden_sizes=hidden_sizes,
        encoder_layers=_layer_count(src, "transformer.encoder.layers."),
        decoder_layers=_layer_count(src, "transformer.decoder.layers."),
        encoder_ffn_dim=int(src["transformer.encoder.layers.0.ffns.0.layers.0.0.weight"].shape[0]),
        decoder_ffn_dim=int(src["transformer.decoder.layers.0.ffns.0.layers.0.0.weight"].shape[0]),
        num_queries=int(src["anchor_box_embed.weight"].shape[0]),
        num_classes=num_classes,
        encoder_post_norm="transformer.encoder.post_norm_layer.weight" in src,
    )


def dab_detr_config(
    arch: Architecture, num_heads: int = DETREX_NUM_HEADS, pos_temperature: int = DETREX_POS_TEMPERATURE
):
    from transformers import DabDetrConfig, ResNetConfig

    from data.coco import COCO_NAMES

    if arch.hidden_size % num_heads:
        raise ConversionError(f"hidden size {arch.hidden_size} is not divisible by --num-heads {num_heads}")
    names = list(COCO_NAMES) if arch.num_classes == len(COCO_NAMES) else [f"class{i}" for i in range(arch.num_classes)]
    backbone = ResNetConfig(
        embedding_size=arch.embedding_size,
        hidden_sizes=arch.hidden_sizes,
        depths=arch.depths,
        layer_type="bottleneck",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,  # detrex: stride_in_1x1=False (stride in the 3x3)
        out_features=[f"stage{len(arch.depths)}"],
    )
    return DabDetrConfig(
        backbone_config=backbone,
        hidden_size=arch.hidden_size,
        num_queries=arch.num_queries,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_ffn_dim=arch.encoder_ffn_dim,
        decoder_ffn_dim=arch.decoder_ffn_dim,
        encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads,
        activation_function="prelu",
        num_patterns=1,
        keep_query_pos=False,
        query_dim=4,
        normalize_before=arch.encoder_post_norm,  # transformers' only use of it: a final encoder LayerNorm
        temperature_height=pos_temperature,
        temperature_width=pos_temperature,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        auxiliary_loss=False,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


# ------------------------------------------------------------------------------------ rules


def _linear(rules: list, src: str, tgt: str, **kw):
    rules += [Rule(f"{tgt}.weight", f"{src}.weight", **kw), Rule(f"{tgt}.bias", f"{src}.bias", **kw)]


def _mlp(rules: list, src: str, tgt: str, num_layers: int, shared: str | None = None):
    for i in range(num_layers):
        for p in ("weight", "bias"):
            same = (f"{shared}.layers.{i}.{p}",) if shared else ()
            rules.append(Rule(f"{tgt}.layers.{i}.{p}", f"{src}.layers.{i}.{p}", same_as=same))


def _conv_bn(rules: list, src: str, tgt: str):
    rules.append(Rule(f"{tgt}.convolution.weight", f"{src}.weight"))
    for p in ("weight", "bias", "running_mean", "running_var"):
        rules.append(Rule(f"{tgt}.normalization.{p}", f"{src}.norm.{p}"))


def _ffn(rules: list, src: str, fc1: str, fc2: str, act: str):
    """detrex FFN: layers.0 = Sequential(Linear, PReLU, Dropout), layers.1 = Linear; the PReLU is
    also registered as `activation`, so its weight appears under both names."""
    _linear(rules, f"{src}.layers.0.0", fc1)
    _linear(rules, f"{src}.layers.1", fc2)
    rules.append(Rule(f"{act}.weight", f"{src}.layers.0.1.weight", same_as=(f"{src}.activation.weight",)))


def _backbone_rules(rules: list, arch: Architecture):
    _conv_bn(rules, "backbone.stem.conv1", BACKBONE + "embedder.embedder")
    in_ch = arch.embedding_size
    for s, (depth, out_ch) in enumerate(zip(arch.depths, arch.hidden_sizes)):
        for b in range(depth):
            src, tgt = f"backbone.res{s + 2}.{b}", f"{BACKBONE}encoder.stages.{s}.layers.{b}"
            stride = 2 if (s > 0 and b == 0) else 1
            if in_ch != out_ch or stride != 1:  # where transformers' bottleneck has a projection
                _conv_bn(rules, f"{src}.shortcut", f"{tgt}.shortcut")
            for j in range(3):
                _conv_bn(rules, f"{src}.conv{j + 1}", f"{tgt}.layer.{j}")
            in_ch = out_ch


def _encoder_rules(rules: list, arch: Architecture):
    _mlp(rules, "transformer.encoder.query_scale", "model.encoder.query_scale", 2)
    for layer in range(arch.encoder_layers):
        src, tgt = f"transformer.encoder.layers.{layer}", f"model.encoder.layers.{layer}"
        mha = f"{src}.attentions.0.attn"  # torch.nn.MultiheadAttention, packed q/k/v
        for i, name in enumerate("qkv"):
            rules.append(Rule(f"{tgt}.self_attn.{name}_proj.weight", f"{mha}.in_proj_weight", op=("chunk", i)))
            rules.append(Rule(f"{tgt}.self_attn.{name}_proj.bias", f"{mha}.in_proj_bias", op=("chunk", i)))
        _linear(rules, f"{mha}.out_proj", f"{tgt}.self_attn.out_proj")
        _linear(rules, f"{src}.norms.0", f"{tgt}.self_attn_layer_norm")
        _ffn(rules, f"{src}.ffns.0", f"{tgt}.fc1", f"{tgt}.fc2", f"{tgt}.activation_fn")
        _linear(rules, f"{src}.norms.1", f"{tgt}.final_layer_norm")
    if arch.encoder_post_norm:
        _linear(rules, "transformer.encoder.post_norm_layer", "model.encoder.norm")


def _decoder_rules(rules: list, arch: Architecture):
    for layer in range(arch.decoder_layers):
        src, tgt = f"transformer.decoder.layers.{layer}", f"model.decoder.layers.{layer}"
        for p in ("query_content_proj", "query_pos_proj", "key_content_proj", "key_pos_proj", "value_proj"):
            _linear(rules, f"{src}.attentions.0.{p}", f"{tgt}.self_attn.self_attn_{p}")
        _linear(rules, f"{src}.attentions.0.out_proj", f"{tgt}.self_attn.self_attn.output_proj")
        _linear(rules, f"{src}.norms.0", f"{tgt}.self_attn.self_attn_layer_norm")
        # detrex deletes query_pos_proj of the cross attention after layer 0 (keep_query_pos=False)
        cross = ["query_content_proj", "query_pos_sine_proj", "key_content_proj", "key_pos_proj", "value_proj"]
        for p in cross + (["query_pos_proj"] if layer == 0 else []):
            _linear(rules, f"{src}.attentions.1.{p}", f"{tgt}.cross_attn.cross_attn_{p}")
        _linear(rules, f"{src}.attentions.1.out_proj", f"{tgt}.cross_attn.cross_attn.output_proj")
        _linear(rules, f"{src}.norms.1", f"{tgt}.cross_attn.cross_attn_layer_norm")
        _ffn(rules, f"{src}.ffns.0", f"{tgt}.mlp.fc1", f"{tgt}.mlp.fc2", f"{tgt}.mlp.activation_fn")
        _linear(rules, f"{src}.norms.2", f"{tgt}.mlp.final_layer_norm")
    for head in ("query_scale", "ref_point_head", "ref_anchor_head"):
        _mlp(rules, f"transformer.decoder.{head}", f"model.decoder.{head}", 2)
    _linear(rules, "transformer.decoder.post_norm_layer", "model.decoder.layernorm")


def build_rules(arch: Architecture) -> list[Rule]:
    rules: list[Rule] = []
    _backbone_rules(rules, arch)
    _linear(rules, "input_proj", "model.input_projection")
    _encoder_rules(rules, arch)
    _decoder_rules(rules, arch)
    rules.append(Rule("model.query_refpoint_embeddings.weight", "anchor_box_embed.weight"))
    rules.append(Rule("model.patterns.weight", LABEL_ENCODER, op=("pattern", arch.num_classes)))
    _linear(rules, "class_embed", "class_embed")
    # one box MLP, registered twice in detrex (bbox_embed, transformer.decoder.bbox_embed) and tied
    # twice in transformers (bbox_predictor, model.decoder.bbox_embed)
    _mlp(rules, "bbox_embed", "bbox_predictor", 3, shared="transformer.decoder.bbox_embed")
    _mlp(rules, "bbox_embed", "model.decoder.bbox_embed", 3)
    return rules


def _apply(op: tuple, tensor: torch.Tensor) -> torch.Tensor:
    if op[0] == "copy":
        return tensor.clone()
    if op[0] == "chunk":  # nn.MultiheadAttention packs [q; k; v] along dim 0
        return tensor.chunk(3, dim=0)[op[1]].clone()
    if op[0] == "pattern":  # DN-DETR's matching-part query: label_encoder(num_classes) ++ indicator 0
        row = tensor[op[1]]
        return torch.cat([row, row.new_zeros(1)])[None].clone()
    raise AssertionError(op)


# ------------------------------------------------------------------------------- conversion


def _is_ignored(key: str) -> str | None:
    return next((why for pattern, why in IGNORED.items() if re.search(pattern, key)), None)


def _listing(title: str, items: list) -> str:
    shown = "\n".join(f"    {x}" for x in items[:60])
    more = f"\n    ... and {len(items) - 60} more" if len(items) > 60 else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def convert_state_dict(
    src: Mapping[str, torch.Tensor], num_heads: int = DETREX_NUM_HEADS, pos_temperature: int = DETREX_POS_TEMPERATURE
):
    """detrex DN-DETR state dict -> (DabDetrConfig, transformers state dict, report dict).

    Raises ConversionError listing every unused source key, missing source / target key, extra
    target key, shape mismatch and differing copy of a shared module.
    """
    from transformers import DabDetrForObjectDetection

    arch = infer_architecture(src)
    config = dab_detr_config(arch, num_heads, pos_temperature)
    with torch.device("meta"):  # shapes and names only, no memory, no init
        expected = {k: tuple(v.shape) for k, v in DabDetrForObjectDetection(config).state_dict().items()}

    out, used = {}, set()
    missing_src, shapes, shared = [], [], []
    for rule in build_rules(arch):
        if rule.source not in src:
            missing_src.append(f"{rule.source}  (for {rule.target})")
            continue
        used.add(rule.source)
        for other in rule.same_as:
            used.add(other)
            if other not in src:
                missing_src.append(f"{other}  (shared copy of {rule.source})")
            elif not torch.equal(src[other], src[rule.source]):
                shared.append(f"{other} != {rule.source}")
        tensor = _apply(rule.op, src[rule.source])
        if rule.target in expected and tuple(tensor.shape) != expected[rule.target]:
            shapes.append(f"{rule.target}: {tuple(tensor.shape)} from {rule.source}, expected {expected[rule.target]}")
        out[rule.target] = tensor

    ignored = sorted(k for k in src if k not in used and _is_ignored(k))
    unused = sorted(k for k in src if k not in used and not _is_ignored(k))
    missing_tgt = sorted(set(expected) - set(out))
    extra_tgt = sorted(set(out) - set(expected))
    problems = [
        (t, x)
        for t, x in [
            ("unused source keys", unused),
            ("missing source keys", missing_src),
            ("missing target keys", missing_tgt),
            ("unexpected target keys", extra_tgt),
            ("shape mismatches", shapes),
            ("shared-module copies that differ", shared),
        ]
        if x
    ]
    if problems:
        raise ConversionError(
            "the detrex checkpoint does not map onto DabDetrForObjectDetection:\n"
            + "\n".join(_listing(t, x) for t, x in problems)
        )
    report = {
        "source_keys": len(src),
        "used_source_keys": len(used),
        "target_keys": len(out),
        "ignored_source_keys": {k: _is_ignored(k) for k in ignored},
        "label_encoder_rows_dropped": f"0..{arch.num_classes - 1} (noised-label embeddings, training only)",
        "architecture": {k: v for k, v in vars(arch).items() if k != "notes"},
        "num_heads": num_heads,
        "pos_temperature": pos_temperature,
    }
    return config, out, report


def convert_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    num_heads: int = DETREX_NUM_HEADS,
    pos_temperature: int = DETREX_POS_TEMPERATURE,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> dict:
    """Convert, save with save_pretrained (atomically), reload and compare every tensor."""
    from transformers import DabDetrForObjectDetection

    from data.atomic import save_pretrained_atomic
    from data.cache import sha256_file

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExists(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    config, state, report = convert_state_dict(load_detrex_state_dict(ckpt, trust_pickle), num_heads, pos_temperature)
    model = DabDetrForObjectDetection(config)
    model.load_state_dict(state, strict=True)
    report.update(
        {
            "source": str(ckpt.resolve()),
            "sha256": sha256_file(ckpt),
            "converter": "python -m metrics.detectors.convert_dn_detr",
        }
    )
    save_pretrained_atomic(
        model.eval(), out_dir, extra_files={"conversion.json": json.dumps(report, indent=2, sort_keys=True)}
    )
    reloaded = DabDetrForObjectDetection.from_pretrained(str(out_dir), local_files_only=True).state_dict()
    differ = sorted(k for k, v in state.items() if k not in reloaded or not torch.equal(reloaded[k], v))
    if differ:
        raise ConversionError(_listing(f"{out_dir}: tensors that did not survive save/reload", differ))
    return report


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metrics.detectors.convert_dn_detr", description=__doc__.split("\n")[0]
    )
    parser.add_argument("checkpoint", help="detrex checkpoint, e.g. dn_detr_r50_50ep.pth")
    parser.add_argument("out_dir", help="folder to write (config.json + model.safetensors + conversion.json)")
    parser.add_argument("--num-heads", type=int, default=DETREX_NUM_HEADS, help="attention heads (detrex: 8)")
    parser.add_argument(
        "--pos-temperature",
        type=int,
        default=DETREX_POS_TEMPERATURE,
        help="sine position embedding temperature (detrex DN-DETR: 20)",
    )
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling (trusted files only)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty out_dir")
    args = parser.parse_args(argv)
    report = convert_checkpoint(
        args.checkpoint, args.out_dir, args.num_heads, args.pos_temperature, args.trust_pickle, args.overwrite
    )
    print(
        f"wrote {args.out_dir}: {report['target_keys']} tensors from {report['used_source_keys']} of "
        f"{report['source_keys']} source keys; ignored: {sorted(report['ignored_source_keys']) or 'none'}; "
        f"label_encoder rows {report['label_encoder_rows_dropped']} dropped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
