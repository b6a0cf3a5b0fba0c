"""Full U-Net fine-tuning or LoRA adapters (peft), and merging for export."""

from __future__ import annotations

import torch


def apply_adapter(unet: torch.nn.Module, adapter_cfg) -> torch.nn.Module:
    """`unet`: every U-Net weight trains. `lora`: only the rank-r adapters on the attention
    projections train (peft wraps the model; its forward passes through unchanged)."""
    name = adapter_cfg.name
    if name == "unet":
        unet.requires_grad_(True)
        return unet
    if name == "lora":
        # UNetSpatioTemporalConditionModel has no diffusers `add_adapter`, so peft wraps it directly.
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=int(adapter_cfg.rank),
            lora_alpha=float(adapter_cfg.lora_alpha),
            lora_dropout=float(adapter_cfg.dropout),
            target_modules=list(adapter_cfg.target_modules),
            init_lora_weights=True,
        )
        return get_peft_model(unet, config)
    raise ValueError(f"adapter.name={name!r}: valid are 'unet', 'lora'")


def merged_unet(model: torch.nn.Module) -> torch.nn.Module:
    """The plain diffusers U-Net, LoRA weights merged into the base weights when present."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
