"""The official DINOv2 torch.hub checkpoint, converted to transformers' Dinov2Model.

The reference is a hand-written forward of facebookresearch/dinov2's DinoVisionTransformer (its
block: x + ls1 * attn(norm1(x)), x + ls2 * mlp(norm2(x)); qkv packed as [q; k; v] rows; final norm)
on the same state dict, so a wrong split or a swapped name shows as a different output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainers.dinov2_hub import Dinov2ConversionError, hub_config, load_hub_dinov2, load_hub_state_dict

D, DEPTH, HEADS, PATCH, GRID, MLP = 128, 2, 2, 14, 3, 256  # heads = D / 64, as the converter infers


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of dinov2's vision_transformer.py."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, D),
        "pos_embed": r(1, 1 + GRID * GRID, D),
        "mask_token": r(1, D),
        "patch_embed.proj.weight": r(D, 3, PATCH, PATCH),
        "patch_embed.proj.bias": r(D),
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + r(D),
                b + "norm1.bias": r(D),
                b + "attn.qkv.weight": r(3 * D, D, scale=0.2),
                b + "attn.qkv.bias": r(3 * D),
                b + "attn.proj.weight": r(D, D, scale=0.2),
                b + "attn.proj.bias": r(D),
                b + "ls1.gamma": 0.5 + r(D),
                b + "norm2.weight": 1 + r(D),
                b + "norm2.bias": r(D),
                b + "mlp.fc1.weight": r(MLP, D, scale=0.2),
                b + "mlp.fc1.bias": r(MLP),
                b + "mlp.fc2.weight": r(D, MLP, scale=0.2),
                b + "mlp.fc2.bias": r(D),
                b + "ls2.gamma": 0.5 + r(D),
            }
        )
    return sd


def reference_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """DinoVisionTransformer.forward_features' x_norm (cls + patch tokens), written out."""
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        B, N, _ = h.shape
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (D // HEADS) ** -0.5, -1) @ v
        a = F.linear(a.transpose(1, 2).reshape(B, N, D), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        t = t + sd[b + "ls1.gamma"] * a
        h = F.layer_norm(t, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])), *_fc2(sd, b))
        t = t + sd[b + "ls2.gamma"] * h
    return F.layer_norm(t, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def _fc2(sd, b):
    return sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"]


def test_converted_checkpoint_gives_the_reference_output(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(sd, path)
    cfg = hub_config(load_hub_state_dict(path))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (D, DEPTH, HEADS)
    assert (cfg.patch_size, cfg.image_size, cfg.mlp_ratio) == (PATCH, GRID * PATCH, MLP / D)
    model = load_hub_dinov2(path)
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state
    ref = reference_forward(sd, x)
    assert ours.shape == (2, 1 + GRID * GRID, D)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # a swapped q / k split would change the output: the comparison is sensitive to it
    bad = dict(sd)
    q, k, v = sd["blocks.0.attn.qkv.weight"].chunk(3)
    bad["blocks.0.attn.qkv.weight"] = torch.cat([k, q, v])
    assert not torch.allclose(reference_forward(bad, x), ours, atol=1e-3)


def test_saved_and_reloaded_through_from_pretrained(tmp_path):
    from transformers import AutoModel

    torch.save(official_state_dict(), tmp_path / "hub.pth")
    model = load_hub_dinov2(tmp_path / "hub.pth")
    model.save_pretrained(tmp_path / "hf")
    again = AutoModel.from_pretrained(tmp_path / "hf")
    x = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("norm.weight"), "missing \\['norm.weight'\\]"),
        (lambda sd: sd.update(register_tokens=torch.zeros(1, 4, D)), "register tokens"),
        (lambda sd: sd.update({"blocks.0.attn.extra": torch.zeros(1)}), "unused"),
        (lambda sd: sd.pop("blocks.1.ls2.gamma"), "unfilled"),
    ],
)
def test_wrong_state_dicts_are_refused_by_name(tmp_path, change, message):
    sd = official_state_dict()
    change(sd)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(Dinov2ConversionError, match=message):
        load_hub_dinov2(tmp_path / "x.pth")


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(Dinov2ConversionError, match="not a torch state dict"):
        load_hub_dinov2(tmp_path / "junk.pth")
