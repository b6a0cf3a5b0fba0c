"""Speed devices of the decoder that L_feat differentiates through: channels-last weights, activation
checkpointing (per chunk or per block), the attention kernel, and decoding in chunks with the graph
kept. None of them changes what is computed, only how fast and in how much memory."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def set_channels_last(module: torch.nn.Module, on: bool = True) -> int:
    """Store the 2-D convolution weights of `module` channels-last (NHWC), the layout cuDNN's bf16
    kernels run in, so they are not transposed at every call (`on=False` restores NCHW). Conv3d
    weights (the temporal decoder's time convolutions) stay as they are: channels_last is a 4-D
    format. Returns how many weights were set."""
    layout = torch.channels_last if on else torch.contiguous_format
    n = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=layout)
            n += 1
    return n


CHECKPOINT_LEVELS = ("chunk", "blocks")


def _checkpoint_level(loss_cfg) -> str:
    level = loss_cfg.get("decode_checkpoint_level", "chunk")
    if level not in CHECKPOINT_LEVELS:
        raise ValueError(f"loss.decode_checkpoint_level={level!r}: valid are {', '.join(CHECKPOINT_LEVELS)}")
    return level


def chunk_checkpoint(loss_cfg) -> bool:
    """Whether each decoded chunk is recomputed whole in the backward pass (decode_checkpoint at chunk level)."""
    return bool(loss_cfg.decode_checkpoint) and _checkpoint_level(loss_cfg) == "chunk"


def block_checkpoint(loss_cfg) -> bool:
    """Whether the decoder checkpoints its own mid and up blocks (decode_checkpoint at blocks level):
    finer than a chunk, so a larger chunk may fit; conv_in and the output layers keep their activations."""
    return bool(loss_cfg.decode_checkpoint) and _checkpoint_level(loss_cfg) == "blocks"


def set_decoder_block_checkpointing(vae, on: bool) -> None:
    """diffusers' gradient checkpointing of the temporal decoder's blocks (the encoder runs without
    gradients, so only the decoder is affected)."""
    vae.enable_gradient_checkpointing() if on else vae.disable_gradient_checkpointing()


def set_decoder_attention(vae, kind: str) -> None:
    """The temporal VAE's attention (the decoder's mid block): sdpa = diffusers' AttnProcessor2_0
    (F.scaled_dot_product_attention, its default), eager = AttnProcessor (explicit matmuls + softmax)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    procs = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}
    if kind not in procs:
        raise ValueError(f"loss.decode_attention={kind!r}: valid are {', '.join(procs)}")
    vae.set_attn_processor(procs[kind]())


def decoder_attention(vae) -> str:
    """Which of set_decoder_attention's kinds the VAE uses now (or the processor's class name)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    kinds = {type(p) for p in vae.attn_processors.values()}
    return {frozenset({AttnProcessor2_0}): "sdpa", frozenset({AttnProcessor}): "eager"}.get(
        frozenset(kinds), ",".join(sorted(k.__name__ for k in kinds))
    )


def decode_with_grad(
    vae,
    z0_hat: torch.Tensor,
    latent_scale: float,
    chunk: int = 8,
    use_checkpoint: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Decode z0_hat [B,T,4,h,w] with the frozen temporal decoder, keeping the graph: [B,T,3,H,W].

    Frames are decoded `chunk` at a time (as the SVD pipeline does at inference); with
    `use_checkpoint` each chunk's activations are recomputed in the backward pass; with
    `channels_last` the latents enter the decoder in NHWC (use with `set_channels_last(vae.decoder)`).
    """
    B, T = z0_hat.shape[:2]
    dtype = vae.dtype
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run(z, n):
        return vae.decode(z.to(dtype).contiguous(memory_format=layout), num_frames=n).sample

    outs = []
    for b in range(B):
        z = z0_hat[b] / latent_scale
        for s in range(0, T, chunk):
            zc = z[s : s + chunk]
            n = zc.shape[0]
            outs.append(checkpoint(run, zc, n, use_reentrant=False) if use_checkpoint else run(zc, n))
    return torch.cat(outs).float().view(B, T, *outs[0].shape[1:])
