"""Where work runs and in which precision: one reading of a `device: auto | cpu | cuda[:i]` setting
and one table of dtype names for every layer (training, generation, metrics). Lives in `data/`, the
package every other one may import."""

from __future__ import annotations

from contextlib import contextmanager

import torch

# precision names of the configs: train.mixed_precision (no | bf16 | fp16, accelerate's names) and
# the generation/metrics dtypes (fp32 | fp16 | bf16)
DTYPES = {"no": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None, indexed: bool = False) -> str:
    """`auto` (or unset) is the GPU when there is one, else the CPU; anything else is kept as given.
    `indexed`: a bare `cuda` becomes `cuda:0` (ultralytics turns a bare "cuda" into
    CUDA_VISIBLE_DEVICES="cuda"; torch treats both alike)."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    name = str(name)
    return "cuda:0" if indexed and name == "cuda" else name


def torch_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """The torch dtype of a precision name of DTYPES; `key` names the config key in the error."""
    if name not in DTYPES:
        raise ValueError(f"{key}={name!r}: valid are {', '.join(DTYPES)}")
    return DTYPES[name]


@contextmanager
def keeps_torch_threads(threads: int | None = None):
    """Run the block at `threads` torch threads (None: as it is), and restore the count after.

    The count changes the order of float sums, so trained weights depend on it. Two users: a
    foundation part pinned to its own count, and every ultralytics call, whose `select_device` (run
    by its trainer and by the first `predict` of a model) calls `torch.set_num_threads(NUM_THREADS)`,
    cpu_count - 1 capped at 8, for the whole process: without the restore, a later stage's result
    would depend on whether a YOLO evaluation ran before it in the process."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        torch.set_num_threads(before)
