"""DN-DETR backend (docs/dn_detr.md): the converter on a detrex-style model built here, the transformers
backend on tiny random DabDetr folders loaded by path, and the native detrex backend when detrex
is installed.

`DetrexLikeDNDETR` below is a small re-implementation of detrex's DN-DETR *inference* written for
this test from reading detrex's sources (projects/dn_detr/modeling, detrex/layers, detectron2's
ResNet): same module tree, so its `state_dict()` carries detrex's real key names (packed
nn.MultiheadAttention in_proj, the PReLU registered twice, the box head shared with the decoder,
FrozenBN buffers), at scaled-down widths. Its forward is an independent reference for the
converted transformers model. detrex's get_sine_pos_embed hard-codes 128 features per coordinate
(= d/2 at detrex's d=256); the scaled-down reference uses d/2, as transformers does.
"""

import json
import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metrics.detectors import Detections, build_detector
from metrics.detectors.convert_dn_detr import ConversionError, convert_checkpoint, convert_state_dict, main
from metrics.detectors.dn_detr import (
    DNDETRDetector,
    Preprocess,
    inverse_sigmoid_eps,
    make_tiny_dn_detr,
    resize_shape,
    select_top_k,
    to_frame_pixels,
)


@dataclass(frozen=True)
class Dims:
    d: int = 32
    heads: int = 4
    ffn: int = 48
    queries: int = 12
    classes: int = 80
    stem: int = 8
    widths: tuple = (16, 32, 64, 128)
    depths: tuple = (1, 2, 1, 1)
    enc: int = 2
    dec: int = 2


TINY = Dims()
R50 = Dims(
    d=256, heads=8, ffn=2048, queries=300, stem=64, widths=(256, 512, 1024, 2048), depths=(3, 4, 6, 3), enc=6, dec=6
)  # detrex's dn_detr_r50
D_MODEL, HEADS, CLASSES = TINY.d, TINY.heads, TINY.classes
CAR = 2


# ======================================================================= detrex-like reference


class FrozenBN(nn.Module):  # detectron2.layers.FrozenBatchNorm2d: four buffers, eps 1e-5
    def __init__(self, n):
        super().__init__()
        for name, init in (
            ("weight", torch.ones),
            ("bias", torch.zeros),
            ("running_mean", torch.zeros),
            ("running_var", torch.ones),
        ):
            self.register_buffer(name, init(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale[:, None, None] + (self.bias - self.running_mean * scale)[:, None, None]


class Conv(nn.Conv2d):  # detectron2.layers.Conv2d with norm= : weight + `.norm`
    def __init__(self, cin, cout, k, stride=1):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.norm = FrozenBN(cout)

    def forward(self, x):
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):  # stride_in_1x1=False: the stride sits in the 3x3 conv
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.shortcut = Conv(cin, cout, 1, stride) if cin != cout else None
        self.conv1, self.conv2, self.conv3 = (
            Conv(cin, cout // 4, 1),
            Conv(cout // 4, cout // 4, 3, stride),
            Conv(cout // 4, cout, 1),
        )

    def forward(self, x):
        y = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.conv1 = Conv(3, dm.stem, 7, 2)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.stem, cin = Stem(dm), dm.stem
        for s, (depth, cout) in enumerate(zip(dm.depths, dm.widths)):
            blocks = [Bottleneck(cin if b == 0 else cout, cout, 2 if (s and b == 0) else 1) for b in range(depth)]
            self.add_module(f"res{s + 2}", nn.Sequential(*blocks))
            cin = cout

    def forward(self, x):
        return self.res5(self.res4(self.res3(self.res2(self.stem(x)))))


class MLP(nn.Module):
    def __init__(self, cin, hidden, cout, n):
        super().__init__()
        dims = [cin] + [hidden] * (n - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class FFN(nn.Module):  # the PReLU is both `activation` and layers.0.1
    def __init__(self, dm):
        super().__init__()
        self.activation = nn.PReLU()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(dm.d, dm.ffn), self.activation, nn.Dropout(0.0)),
            nn.Linear(dm.ffn, dm.d),
            nn.Dropout(0.0),
        )

    def forward(self, x):
        return x + self.layers(x)


class EncoderAttention(nn.Module):  # detrex MultiheadAttention wrapping torch's (sequence-first)
    def __init__(self, dm):
        super().__init__()
        self.attn = nn.MultiheadAttention(dm.d, dm.heads)

    def forward(self, x, pos):  # x, pos: [N, L, d]
        q = (x + pos).transpose(0, 1)
        return x + self.attn(q, q, x.transpose(0, 1))[0].transpose(0, 1)


def _heads(x, heads):
    n, length, width = x.shape
    return x.reshape(n, length, heads, width // heads).transpose(1, 2)  # [N, h, L, width/h]


def _merge(x):
    return x.transpose(1, 2).flatten(2)


class ConditionalSelfAttention(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.heads = dm.heads
        for name in (
            "query_content_proj",
            "query_pos_proj",
            "key_content_proj",
            "key_pos_proj",
            "value_proj",
            "out_proj",
        ):
            self.add_module(name, nn.Linear(dm.d, dm.d))

    def forward(self, x, pos):
        q = _heads(self.query_content_proj(x) + self.query_pos_proj(pos), self.heads)
        k = _heads(self.key_content_proj(x) + self.key_pos_proj(pos), self.heads)
        attn = (q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2)).softmax(-1)
        return x + self.out_proj(_merge(attn @ _heads(self.value_proj(x), self.heads)))


class ConditionalCrossAttention(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.heads = dm.heads
        for name in (
            "query_content_proj",
            "query_pos_proj",
            "query_pos_sine_proj",
            "key_content_proj",
            "key_pos_proj",
            "value_proj",
            "out_proj",
        ):
            self.add_module(name, nn.Linear(dm.d, dm.d))

    def forward(self, x, memory, key_pos, query_pos, sine, first):
        q, k = self.query_content_proj(x), self.key_content_proj(memory)
        k_pos = self.key_pos_proj(key_pos)
        if first:
            q, k = q + self.query_pos_proj(query_pos), k + k_pos
        # per head: [content, positional] halves, so the head width doubles
        q = torch.cat([_heads(q, self.heads), _heads(self.query_pos_sine_proj(sine), self.heads)], -1)
        k = torch.cat([_heads(k, self.heads), _heads(k_pos, self.heads)], -1)
        attn = (q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2)).softmax(-1)
        return x + self.out_proj(_merge(attn @ _heads(self.value_proj(memory), self.heads)))


class Layer(nn.Module):  # detrex BaseTransformerLayer: attentions / ffns / norms
    def __init__(self, dm, attentions, num_norms):
        super().__init__()
        self.attentions = nn.ModuleList(attentions)
        self.ffns = nn.ModuleList([FFN(dm)])
        self.norms = nn.ModuleList(nn.LayerNorm(dm.d) for _ in range(num_norms))


class Encoder(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.layers = nn.ModuleList(Layer(dm, [EncoderAttention(dm)], 2) for _ in range(dm.enc))
        self.query_scale = MLP(dm.d, dm.d, dm.d, 2)

    def forward(self, x, pos):
        for layer in self.layers:
            x = layer.norms[0](layer.attentions[0](x, pos * self.query_scale(x)))
            x = layer.norms[1](layer.ffns[0](x))
        return x


def sine_embed(coords, num_feats, temperature):
    """Each coordinate in [0, 1] -> num_feats interleaved sin/cos features (detrex get_sine_pos_embed)."""
    dim_t = temperature ** (2 * torch.div(torch.arange(num_feats), 2, rounding_mode="floor") / num_feats)
    parts = []
    for c in coords.unbind(-1):
        v = c[..., None] * 2 * math.pi / dim_t
        parts.append(torch.stack([v[..., 0::2].sin(), v[..., 1::2].cos()], -1).flatten(-2))
    parts[0], parts[1] = parts[1], parts[0]  # exchange_xy: (y, x, w, h)
    return torch.cat(parts, -1)


def inverse_sigmoid(x, eps=1e-3):  # detrex.utils.inverse_sigmoid
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class Decoder(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.d = dm.d
        self.layers = nn.ModuleList(
            Layer(dm, [ConditionalSelfAttention(dm), ConditionalCrossAttention(dm)], 3) for _ in range(dm.dec)
        )
        for layer in self.layers[1:]:
            layer.attentions[1].query_pos_proj = None  # as detrex does (keep_query_pos=False)
        self.query_scale = MLP(dm.d, dm.d, dm.d, 2)
        self.ref_point_head = MLP(2 * dm.d, dm.d, dm.d, 2)
        self.ref_anchor_head = MLP(dm.d, dm.d, 2, 2)
        self.post_norm_layer = nn.LayerNorm(dm.d)
        self.bbox_embed = None

    def forward(self, tgt, memory, key_pos, anchors):
        ref = anchors.sigmoid()
        half = self.d // 2
        for i, layer in enumerate(self.layers):
            sine = sine_embed(ref, half, 10000)
            query_pos = self.ref_point_head(sine)
            sine = sine[..., : self.d] * (1 if i == 0 else self.query_scale(tgt))
            hw = self.ref_anchor_head(tgt).sigmoid()  # modulate_hw_attn
            sine = torch.cat(
                [
                    sine[..., :half] * (hw[..., 1] / ref[..., 3])[..., None],
                    sine[..., half:] * (hw[..., 0] / ref[..., 2])[..., None],
                ],
                -1,
            )
            tgt = layer.norms[0](layer.attentions[0](tgt, query_pos))
            tgt = layer.norms[1](layer.attentions[1](tgt, memory, key_pos, query_pos, sine, i == 0))
            tgt = layer.norms[2](layer.ffns[0](tgt))
            last_ref = ref
            ref = (self.bbox_embed(tgt) + inverse_sigmoid(ref)).sigmoid()
        return self.post_norm_layer(tgt), last_ref


class Transformer(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.encoder, self.decoder = Encoder(dm), Decoder(dm)


class Denoising(nn.Module):
    def __init__(self, dm):
        super().__init__()
        self.label_encoder = nn.Embedding(dm.classes + 1, dm.d - 1)  # one dim left for the indicator


class DetrexLikeDNDETR(nn.Module):
    def __init__(self, dm: Dims = TINY):
        super().__init__()
        self.dm = dm
        self.backbone = ResNet(dm)
        self.input_proj = nn.Conv2d(dm.widths[-1], dm.d, 1)
        self.denoising_generator = Denoising(dm)
        self.transformer = Transformer(dm)
        self.anchor_box_embed = nn.Embedding(dm.queries, 4)
        self.class_embed = nn.Linear(dm.d, dm.classes)
        self.bbox_embed = MLP(dm.d, dm.d, 4, 3)
        self.transformer.decoder.bbox_embed = self.bbox_embed  # shared, as in DNDETR.__init__

    @torch.no_grad()
    def forward(self, images):
        """Normalised images [N,3,H,W] -> (logits [N,Q,C], boxes cxcywh [N,Q,4])."""
        dm = self.dm
        feat = self.input_proj(self.backbone(images))
        n, _, h, w = feat.shape
        ys = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w) / (h + 1e-6)
        xs = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w) / (w + 1e-6)
        pos = sine_embed(torch.stack([xs, ys], -1), dm.d // 2, 20)  # (y, x) order, temperature 20
        pos = pos.reshape(1, h * w, dm.d).expand(n, -1, -1)
        memory = self.transformer.encoder(feat.flatten(2).transpose(1, 2), pos)
        # the matching part's content query: label_encoder("no object" = num_classes) ++ indicator 0
        content = torch.cat([self.denoising_generator.label_encoder.weight[dm.classes], torch.zeros(1)])
        tgt = content.expand(n, dm.queries, dm.d)
        anchors = self.anchor_box_embed.weight.expand(n, -1, -1)
        hidden, ref = self.transformer.decoder(tgt, memory, pos, anchors)
        return self.class_embed(hidden), (inverse_sigmoid(ref) + self.bbox_embed(hidden)).sigmoid()


def make_reference(seed=0, dm: Dims = TINY) -> DetrexLikeDNDETR:
    """Random weights that keep activations in range; a few anchors pinned near 0 so that
    detrex's inverse_sigmoid eps (1e-3, transformers: 1e-5) matters."""
    torch.manual_seed(seed)
    model = DetrexLikeDNDETR(dm).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBN):
                m.weight.uniform_(0.5, 1.0), m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2), m.bias.uniform_(-0.1, 0.1)
        model.denoising_generator.label_encoder.weight.normal_()
        model.anchor_box_embed.weight.uniform_(-1.5, 1.5)
        model.anchor_box_embed.weight[:2, 2:] = -9.0  # widths/heights of 1e-4
        for layer in model.bbox_embed.layers:
            layer.weight.mul_(0.3)
    return model


def save_detrex_checkpoint(model, path, extra=None, drop=()):
    state = {k: v.clone() for k, v in model.state_dict().items() if k not in drop}
    state.update(extra or {})
    torch.save({"model": state, "iteration": 187499}, path)
    return path


@pytest.fixture(scope="module")
def reference():
    return make_reference()


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dn_detr")
    ckpt = save_detrex_checkpoint(reference, tmp / "dn_detr_tiny.pth")
    assert main([str(ckpt), str(tmp / "converted"), "--num-heads", str(HEADS)]) == 0  # the CLI
    return tmp / "converted", json.loads((tmp / "converted" / "conversion.json").read_text())


@pytest.fixture(scope="module")
def frames():
    from data.synthetic import synthetic_clip

    return synthetic_clip(5, 3, 72, 104).frames  # uint8 [3, 72, 104, 3] RGB


SMALL = {"short_edge_length": 96, "max_size": 160, "device": "cpu"}


# ======================================================================= converter


def test_reference_state_dict_has_detrex_key_names(reference):
    keys = set(reference.state_dict())
    for k in [
        "backbone.stem.conv1.weight",
        "backbone.stem.conv1.norm.running_var",
        "backbone.res2.0.shortcut.norm.weight",
        "backbone.res3.1.conv2.norm.bias",
        "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight",
        "transformer.encoder.layers.1.ffns.0.activation.weight",
        "transformer.encoder.layers.1.ffns.0.layers.0.1.weight",
        "transformer.decoder.layers.0.attentions.1.query_pos_proj.weight",
        "transformer.decoder.layers.1.attentions.1.query_pos_sine_proj.bias",
        "transformer.decoder.bbox_embed.layers.2.bias",
        "bbox_embed.layers.2.bias",
        "denoising_generator.label_encoder.weight",
        "anchor_box_embed.weight",
    ]:
        assert k in keys, k
    assert "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight" not in keys


def _fingerprinted():
    """Each parameter / buffer gets distinct values: tensor i holds i * 10000 + 0, 1, 2, ...
    (a shared module is one tensor under two names, so both names get the same values)"""
    model = make_reference()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    ids = {}
    with torch.no_grad():
        for i, (name, t) in enumerate(sorted(tensors.items()), start=1):
            t.copy_((i * 10000 + torch.arange(t.numel(), dtype=torch.float32)).reshape(t.shape))
            ids[i] = name
    return model, ids


# target name -> source name, for representative keys (chunk = row block of the packed q/k/v)
EXPECTED_SOURCE = {
    "model.backbone.conv_encoder.model.embedder.embedder.convolution.weight": ("backbone.stem.conv1.weight", None),
    "model.backbone.conv_encoder.model.embedder.embedder.normalization.running_var": (
        "backbone.stem.conv1.norm.running_var",
        None,
    ),
    "model.backbone.conv_encoder.model.encoder.stages.1.layers.0.shortcut.convolution.weight": (
        "backbone.res3.0.shortcut.weight",
        None,
    ),
    "model.backbone.conv_encoder.model.encoder.stages.1.layers.1.layer.2.normalization.bias": (
        "backbone.res3.1.conv3.norm.bias",
        None,
    ),
    "model.input_projection.weight": ("input_proj.weight", None),
    "model.encoder.layers.1.self_attn.q_proj.weight": (
        "transformer.encoder.layers.1.attentions.0.attn.in_proj_weight",
        0,
    ),
    "model.encoder.layers.1.self_attn.k_proj.bias": ("transformer.encoder.layers.1.attentions.0.attn.in_proj_bias", 1),
    "model.encoder.layers.0.self_attn.v_proj.weight": (
        "transformer.encoder.layers.0.attentions.0.attn.in_proj_weight",
        2,
    ),
    "model.encoder.layers.0.self_attn.out_proj.weight": (
        "transformer.encoder.layers.0.attentions.0.attn.out_proj.weight",
        None,
    ),
    "model.encoder.layers.0.final_layer_norm.weight": ("transformer.encoder.layers.0.norms.1.weight", None),
    "model.encoder.layers.1.fc2.bias": ("transformer.encoder.layers.1.ffns.0.layers.1.bias", None),
    "model.decoder.layers.1.mlp.activation_fn.weight": ("transformer.decoder.layers.1.ffns.0.layers.0.1.weight", None),
    "model.decoder.layers.0.self_attn.self_attn_key_pos_proj.weight": (
        "transformer.decoder.layers.0.attentions.0.key_pos_proj.weight",
        None,
    ),
    "model.decoder.layers.0.self_attn.self_attn.output_proj.bias": (
        "transformer.decoder.layers.0.attentions.0.out_proj.bias",
        None,
    ),
    "model.decoder.layers.0.cross_attn.cross_attn_query_pos_proj.weight": (
        "transformer.decoder.layers.0.attentions.1.query_pos_proj.weight",
        None,
    ),
    "model.decoder.layers.1.cross_attn.cross_attn_query_pos_sine_proj.weight": (
        "transformer.decoder.layers.1.attentions.1.query_pos_sine_proj.weight",
        None,
    ),
    "model.decoder.layers.1.cross_attn.cross_attn.output_proj.weight": (
        "transformer.decoder.layers.1.attentions.1.out_proj.weight",
        None,
    ),
    "model.decoder.layers.1.cross_attn.cross_attn_layer_norm.bias": ("transformer.decoder.layers.1.norms.1.bias", None),
    "model.decoder.layers.0.mlp.final_layer_norm.weight": ("transformer.decoder.layers.0.norms.2.weight", None),
    "model.decoder.ref_anchor_head.layers.1.weight": ("transformer.decoder.ref_anchor_head.layers.1.weight", None),
    "model.decoder.layernorm.bias": ("transformer.decoder.post_norm_layer.bias", None),
    "model.query_refpoint_embeddings.weight": ("anchor_box_embed.weight", None),
    "class_embed.bias": ("class_embed.bias", None),
    "bbox_predictor.layers.2.weight": ("bbox_embed.layers.2.weight", None),
    "model.decoder.bbox_embed.layers.0.bias": ("bbox_embed.layers.0.bias", None),
}


def _canonical(name):
    """One name for the tensors detrex registers twice (shared box head, PReLU in its Sequential)."""
    name = re.sub(r"^transformer\.decoder\.bbox_embed\.", "bbox_embed.", name)
    return re.sub(r"ffns\.0\.activation\.weight$", "ffns.0.layers.0.1.weight", name)


def test_every_tensor_lands_where_it_should():
    model, ids = _fingerprinted()
    src = model.state_dict()
    _, out, report = convert_state_dict(src, num_heads=HEADS)
    used = set()
    for target, t in out.items():
        flat = t.flatten()
        if target == "model.patterns.weight":
            # label_encoder row 80 (the "no object" label) followed by the indicator 0
            le = src["denoising_generator.label_encoder.weight"]
            assert torch.equal(flat[:-1], le[CLASSES]) and flat[-1] == 0
            used.add("denoising_generator.label_encoder.weight")
            continue
        source_ids = torch.unique(torch.div(flat, 10000, rounding_mode="floor")).tolist()
        assert len(source_ids) == 1, f"{target} mixes tensors {source_ids}"
        name = ids[int(source_ids[0])]
        offsets = flat - source_ids[0] * 10000
        start = int(offsets[0])
        assert torch.equal(offsets, start + torch.arange(flat.numel(), dtype=torch.float32)), (
            f"{target}: not a contiguous copy"
        )
        if target in EXPECTED_SOURCE:
            exp_name, chunk = EXPECTED_SOURCE[target]
            assert _canonical(name) == exp_name, (target, name)
            assert start == (0 if chunk is None else chunk * flat.numel()), (target, start)
        else:
            assert start == 0 or "in_proj" in name, (target, name)
        used.add(name)
    # every parameter / buffer of the detrex-like model reached the transformers model
    assert set(ids.values()) - used == set()
    assert report["ignored_source_keys"] == {} and report["target_keys"] == len(out)


def test_converter_fails_listing_unused_and_missing_keys(reference, tmp_path):
    extra = {
        "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight": torch.zeros(D_MODEL, D_MODEL),
        "some_new_head.weight": torch.zeros(3),
    }
    ckpt = save_detrex_checkpoint(reference, tmp_path / "extra.pth", extra=extra, drop=("class_embed.bias",))
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(ckpt, tmp_path / "out")
    msg = str(err.value)
    assert "unused source keys (2)" in msg and "some_new_head.weight" in msg
    assert "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight" in msg
    assert "missing source keys (1)" in msg and "class_embed.bias  (for class_embed.bias)" in msg
    assert not (tmp_path / "out").exists()  # nothing written on failure
    # the CLI reports the same and exits with 2 (a user error: data/cli.py)
    assert main([str(ckpt), str(tmp_path / "out")]) == 2


def test_converter_explicit_ignores_and_shared_copies(reference, tmp_path):
    ignored = {
        "criterion.empty_weight": torch.ones(CLASSES + 1),
        "backbone.res2.0.conv1.norm.num_batches_tracked": torch.tensor(5),
    }
    config, _, report = convert_state_dict({**reference.state_dict(), **ignored}, num_heads=HEADS)
    assert set(report["ignored_source_keys"]) == set(ignored)
    assert config.num_patterns == 1 and config.num_labels == CLASSES and config.id2label[CAR] == "car"
    # the two names of the shared box head must hold the same tensor
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["transformer.decoder.bbox_embed.layers.0.bias"] += 1
    with pytest.raises(ConversionError, match="shared-module copies that differ"):
        convert_state_dict(state, num_heads=HEADS)
    state = dict(reference.state_dict())
    state["denoising_generator.label_encoder.weight"] = torch.zeros(CLASSES + 1, D_MODEL)
    with pytest.raises(ConversionError, match="with_indicator"):
        convert_state_dict(state, num_heads=HEADS)


def _with_detrex_eps(model, reference, images):
    """(the converted model's outputs under detrex's inverse-sigmoid eps, the reference's logits and boxes)."""
    want_logits, want_boxes = reference(images)
    with torch.no_grad(), inverse_sigmoid_eps(1e-3):
        got = model(pixel_values=images)
    return got, want_logits, want_boxes


def test_converted_model_matches_the_detrex_like_forward(reference, converted):
    from transformers import DabDetrForObjectDetection

    folder, report = converted
    assert (folder / "conversion.json").is_file() and report["architecture"]["depths"] == list(TINY.depths)
    model = DabDetrForObjectDetection.from_pretrained(str(folder)).eval()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 128)
    got, want_logits, want_boxes = _with_detrex_eps(model, reference, images)
    torch.testing.assert_close(got.logits, want_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.pred_boxes, want_boxes, rtol=1e-4, atol=1e-5)
    # transformers' own eps (1e-5) gives different boxes for the anchors pinned near 0
    with torch.no_grad():
        plain = model(pixel_values=images)
    assert not torch.allclose(plain.pred_boxes[:, :2], want_boxes[:, :2], atol=1e-5)
    from transformers.models.dab_detr import modeling_dab_detr

    assert modeling_dab_detr.inverse_sigmoid.__name__ == "inverse_sigmoid"  # restored


def test_full_size_r50_checkpoint_converts_and_matches():
    """detrex's real sizes (ResNet-50, 6+6 layers, d=256, 8 heads, 300 queries, 80 classes): every key
    maps with the default --num-heads 8 and the converted network gives the reference's outputs."""
    from transformers import DabDetrForObjectDetection

    reference = make_reference(seed=3, dm=R50)
    config, state, report = convert_state_dict(reference.state_dict())
    assert (config.hidden_size, config.encoder_layers, config.decoder_layers, config.num_queries) == (256, 6, 6, 300)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.backbone_config.depths) == (
        8,
        2048,
        [3, 4, 6, 3],
    )
    assert report["source_keys"] == len(reference.state_dict()) and report["ignored_source_keys"] == {}
    model = DabDetrForObjectDetection(config).eval()
    model.load_state_dict(state, strict=True)
    torch.manual_seed(2)
    images = torch.randn(1, 3, 128, 192)
    got, want_logits, want_boxes = _with_detrex_eps(model, reference, images)
    torch.testing.assert_close(got.logits, want_logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.pred_boxes, want_boxes, rtol=1e-3, atol=1e-4)


# ======================================================================= pre / post-processing


def test_resize_shape_matches_detectron2_rounding():
    assert resize_shape(320, 512, 800, 1333) == (800, 1280)  # the paper's detector frames
    assert resize_shape(375, 1242, 800, 1333) == (402, 1333)  # KITTI: capped by max_size
    assert resize_shape(540, 960, 800, 1333) == (750, 1333)
    assert resize_shape(1000, 600, 800, 1333) == (1333, 800)  # portrait
    assert resize_shape(800, 1200, 800, 1333) == (800, 1200)


def test_preprocess_is_pil_bilinear_then_0_255_normalisation(frames):
    from PIL import Image

    pre = Preprocess(96, 160, "bilinear", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    x = pre(frames)
    assert x.shape == (3, 3, 96, 139)  # 72x104 -> 96x138.67 -> 139
    want = np.asarray(Image.fromarray(frames[1]).resize((139, 96), Image.BILINEAR)).astype(np.float32)
    want = (want - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), want, rtol=1e-5, atol=1e-5)


def test_top_k_spans_queries_and_classes_without_nms():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 1], logits[0, 0, 2], logits[0, 2, 3] = 3.0, 2.0, 1.0  # query 0 twice, with two classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    scores, labels, xyxy = select_top_k(logits, boxes, 3)
    np.testing.assert_allclose(scores[0], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])), rtol=1e-6)
    assert labels[0].tolist() == [1, 2, 3]
    torch.testing.assert_close(
        xyxy[0], torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.4, 0.3, 0.6, 0.7], [0.0, 0.5, 0.5, 1.0]])
    )
    assert select_top_k(logits, boxes, 300)[0].shape == (1, 12)  # k capped at queries x classes


def test_boxes_scaled_to_the_input_frame_clipped_and_empty_dropped():
    xyxy = np.array([[0.1, 0.2, 0.5, 0.6], [-0.1, 0.9, 0.3, 1.2], [1.05, 0.1, 1.2, 0.3]], np.float32)
    boxes, keep = to_frame_pixels(xyxy, (800, 1280), (320, 512))
    np.testing.assert_allclose(boxes[0], [51.2, 64, 256, 192], rtol=1e-5)
    np.testing.assert_allclose(boxes[1], [0, 288, 153.6, 320], rtol=1e-5)  # clipped to the frame
    assert keep.tolist() == [True, True, False]  # outside: width 0


# ======================================================================= the transformers backend


def test_backend_equals_reference_pipeline_end_to_end(reference, converted, frames):
    """detect() == resize + normalise + detrex-like forward + detrex's inference post-processing."""
    folder, _ = converted
    det = build_detector({"name": "dn_detr", "weights": str(folder), "min_conf": 0.0, "batch_size": 2, **SMALL})
    got = det.detect(frames)
    pre = Preprocess(96, 160, "bilinear", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    logits, boxes = reference(pre(frames))
    prob = logits.sigmoid().flatten(1)
    for i, d in enumerate(got):
        scores, idx = prob[i].topk(300)
        q, c = idx // CLASSES, idx % CLASSES
        cx, cy, w, h = boxes[i, q].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([104, 72, 104, 72])
        xyxy[:, 0::2], xyxy[:, 1::2] = xyxy[:, 0::2].clamp(0, 104), xyxy[:, 1::2].clamp(0, 72)
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        want_s, want_b, want_c = scores[ok].numpy(), xyxy[ok].numpy(), c[ok].numpy()
        assert abs(len(d) - len(want_s)) <= 1  # a near-tie may cross the top-300 border
        np.testing.assert_allclose(d.scores[:50], want_s[:50], rtol=1e-4, atol=1e-5)
        # each detection is one of the reference's: same class, same score, same box (order may
        # differ between near-equal scores, so match by content rather than by rank)
        same = (
            (want_c[None] == d.labels[:, None])
            & (np.abs(want_s[None] - d.scores[:, None]) < 1e-4)
            & (np.abs(want_b[None] - d.boxes[:, None]).max(-1) < 2e-3)
        )
        assert same.any(1).mean() > 0.99, same.any(1).mean()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_dn_detr(tmp_path_factory.mktemp("tiny") / "tiny_dn_detr")


def test_output_format_is_the_detector_contract(tiny_folder, frames):
    """Same contract as the YOLO backend: one Detections per frame, float32 xyxy boxes inside the
    input frame, float32 scores sorted high to low, int64 COCO-80 labels, at most max_det."""
    det = build_detector(
        {
            "name": "dn_detr",
            "weights": str(tiny_folder),
            "imgsz": 640,
            "nms_iou": 0.7,
            "min_conf": 0.01,
            "max_det": 50,
            "batch_size": 2,
            **SMALL,
        }
    )
    assert det.name == "dn_detr" and det.backend == "transformers"
    out = det.detect(frames)
    assert len(out) == len(frames) and all(isinstance(d, Detections) for d in out)
    for d in out:
        assert 0 < len(d) <= 50
        assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.labels.dtype == np.int64
        assert (np.diff(d.scores) <= 0).all() and (d.scores >= 0.01).all()
        assert ((d.labels >= 0) & (d.labels < 80)).all()
        assert (d.boxes[:, [0, 2]] >= 0).all() and (d.boxes[:, [0, 2]] <= 104).all()
        assert (d.boxes[:, [1, 3]] >= 0).all() and (d.boxes[:, [1, 3]] <= 72).all()
        assert (d.widths > 0).all() and (d.heights > 0).all()
    assert out[0].labels[0] == CAR  # the tiny model favours cars (as the tiny YOLO)


def test_batching_is_invisible_and_class_filter(tiny_folder, frames):
    # min_conf 0.1 keeps the confident (car) boxes; near-equal scores may swap ranks between batch
    # sizes (float rounding), so detections are compared in the order of their boxes
    one = build_detector({"name": "dn_detr", "weights": str(tiny_folder), "batch_size": 1, "min_conf": 0.1, **SMALL})
    three = build_detector({"name": "dn_detr", "weights": str(tiny_folder), "batch_size": 3, "min_conf": 0.1, **SMALL})
    for a, b in zip(one.detect(frames), three.detect(frames)):
        assert len(a) == len(b) > 0
        a, b = (d.select(np.lexsort((d.boxes[:, 1], d.boxes[:, 0], d.labels))) for d in (a, b))
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    full = build_detector({"name": "dn_detr", "weights": str(tiny_folder), "min_conf": 0.0, **SMALL}).detect(frames)
    vehicles = build_detector(
        {"name": "dn_detr", "weights": str(tiny_folder), "classes": [2, 3, 7], "min_conf": 0.0, **SMALL}
    ).detect(frames)
    for d, f in zip(vehicles, full):
        assert set(d.labels.tolist()) <= {2, 3, 7} and len(d) < len(f)
        # the filter applies to detrex's top-300 (it does not promote lower-ranked boxes)
        keep = np.isin(f.labels, [2, 3, 7])
        np.testing.assert_array_equal(d.scores, f.scores[keep])
        np.testing.assert_array_equal(d.boxes, f.boxes[keep])


def test_real_road_image(tiny_folder, shared_data):
    from PIL import Image

    img = np.asarray(Image.open(shared_data / "dashcam" / "images" / "solidWhiteRight.jpg").convert("RGB"))
    det = build_detector({"name": "dn_detr", "weights": str(tiny_folder), "min_conf": 0.0, **SMALL})
    (d,) = det.detect(img[None])
    h, w = img.shape[:2]
    assert len(d) > 0 and d.boxes[:, 2].max() <= w and d.boxes[:, 3].max() <= h


def test_tiny_weights_are_made_once_in_the_cache(tmp_path, frames):
    det = build_detector({"name": "dn_detr", "weights": "tiny", "cache_dir": str(tmp_path), **SMALL})
    assert (tmp_path / "dn_detr" / "tiny_dn_detr_v2" / "config.json").is_file()
    assert len(det.detect(frames[:1])) == 1


def test_detrex_pth_is_converted_into_the_cache(reference, tmp_path):
    ckpt = save_detrex_checkpoint(reference, tmp_path / "dn_detr_tiny.pth")
    det = build_detector(
        {"name": "dn_detr", "weights": str(ckpt), "num_heads": HEADS, "cache_dir": str(tmp_path / "cache"), **SMALL}
    )
    (folder,) = (tmp_path / "cache" / "dn_detr").iterdir()
    assert folder.name.startswith("dn_detr_tiny-") and det.weights == str(folder)


def test_scores_a_smoke_evaluation_like_the_yolo_backend(tmp_path):
    """metrics.evaluate with det.detector.name=dn_detr and weights=tiny: the same path YOLO takes."""
    from omegaconf import OmegaConf

    from data.synthetic import synthetic_clip
    from metrics.evaluate import evaluate, load_config

    cfg = load_config(
        "smoke", ["metrics=[det]", "det.detector.name=dn_detr", "det.detector.weights=tiny", f"cache_dir={tmp_path}"]
    )
    OmegaConf.set_struct(cfg, False)  # DN-DETR-only keys are not in the shared node
    cfg.det.detector.update(short_edge_length=128, max_size=200)
    real = [synthetic_clip(i, 3, 64, 96).frames for i in range(2)]
    gen = [synthetic_clip(i + 10, 3, 64, 96).frames for i in range(2)]
    out = evaluate(real, gen, cfg, progress=False)["det"]
    assert out["detector"] == "dn_detr" and out["n_frames"] == 6
    assert out["n_ref_boxes"] > 0 and out["mIoU"] is not None  # the tiny net gives cars >= 0.6


def test_bad_settings_name_the_config_key(tmp_path, tiny_folder):
    with pytest.raises(FileNotFoundError, match="det.detector.weights='IDEA-Research/dab-detr-resnet-50'"):
        build_detector({"name": "dn_detr", "weights": "IDEA-Research/dab-detr-resnet-50"})
    with pytest.raises(ValueError, match="det.detector.weights is not set"):
        build_detector({"name": "dn_detr"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shortedge'\]"):
        build_detector({"name": "dn_detr", "weights": str(tiny_folder), "shortedge": 600})
    with pytest.raises(ValueError, match="det.detector.backend='onnx'"):
        build_detector({"name": "dn_detr", "weights": str(tiny_folder), "backend": "onnx"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        DNDETRDetector(tmp_path / "empty")


def test_defaults_are_detrex_test_settings():
    from metrics.detectors.dn_detr import default_settings

    s = default_settings()
    assert (s["short_edge_length"], s["max_size"], s["top_k"], s["interp"]) == (800, 1333, 300, "bilinear")
    assert s["pixel_mean"] == [123.675, 116.28, 103.53] and s["pixel_std"] == [58.395, 57.12, 57.375]
    assert s["inverse_sigmoid_eps"] == 1e-3 and s["num_heads"] == 8 and s["backend"] == "transformers"


# ======================================================================= the native detrex backend


def test_native_detrex_backend_matches_the_converted_model(tmp_path, frames):
    """Runs only where detrex + detectron2 are built (they are not on PyPI): detrex's own DN-DETR with
    random weights vs. the same weights converted onto transformers."""
    pytest.importorskip("detectron2", reason="detectron2 is not installed (not on PyPI; see docs/dn_detr.md)")
    pytest.importorskip("detrex", reason="detrex is not installed (not on PyPI; see docs/dn_detr.md)")
    from detectron2.config import LazyConfig, instantiate

    from metrics.detectors.detrex_native import _detrex_root

    config = "projects/dn_detr/configs/dn_detr_r50_50ep.py"
    try:
        root = _detrex_root(None, config)
    except FileNotFoundError as e:
        pytest.skip(f"detrex is importable but its projects/ folder was not found: {e}")
    import sys

    sys.path.insert(0, str(root))
    cfg = LazyConfig.load(str(root / config))
    cfg.model.device = "cpu"
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    ckpt = tmp_path / "random_dn_detr.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    common = {
        "name": "dn_detr",
        "weights": str(ckpt),
        "device": "cpu",
        "min_conf": 0.0,
        "max_det": 50,
        "short_edge_length": 320,
        "max_size": 512,
        "cache_dir": str(tmp_path / "cache"),
    }
    native = build_detector({**common, "backend": "detrex"}).detect(frames[:1])[0]
    ours = build_detector({**common, "backend": "transformers"}).detect(frames[:1])[0]
    np.testing.assert_allclose(ours.scores, native.scores, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours.boxes, native.boxes, rtol=1e-3, atol=1e-2)


def test_metric_weights_accept_a_converted_folder(tiny_folder, tmp_path):
    """metrics.weights takes a converted DN-DETR folder as det.detector.weights (not only a .pth)."""
    from omegaconf import OmegaConf

    from metrics.weights import resolve_weights

    cfg = OmegaConf.create(
        {"cache_dir": str(tmp_path), "det": {"detector": {"name": "dn_detr", "weights": str(tiny_folder)}}}
    )
    assert resolve_weights(cfg, ["det"]) == {"det.detector.weights": str(tiny_folder)}
    cfg.det.detector.weights = str(tmp_path)  # a folder that is no converted model
    with pytest.raises(FileNotFoundError, match="det.detector.weights"):
        resolve_weights(cfg, ["det"])
