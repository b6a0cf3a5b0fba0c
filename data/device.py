"""Where work runs: one reading of a `device: auto | cpu | cuda[:i]` setting for every layer
(training, generation, metrics). Lives in `data/`, the package every other one may import."""
from __future__ import annotations

import torch


def resolve_device(name: str | None) -> str:
    """`auto` (or unset) is the GPU when there is one, else the CPU; anything else is kept as given."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)
