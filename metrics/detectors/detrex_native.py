"""Native DN-DETR: detrex's own `DNDETR` model, for users who built detrex and detectron2.

Selected with `det.detector.backend: detrex` (or `auto` when detrex is importable). The model is
built from detrex's LazyConfig (projects/dn_detr/configs/dn_detr_r50_50ep.py by default) and loads
the detrex checkpoint with detectron2's DetectionCheckpointer; frames are resized with detectron2's
own ResizeShortestEdge and passed as detectron2 inputs, so pre- and post-processing are detrex's.
The only shared code with the transformers backend is the final filter (classes, min_conf,
max_det), so the two backends can be compared output for output.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

from data.device import resolve_device
from metrics.detectors.base import PIL_FILTERS, Detections, OutputFilter, check_frames

log = logging.getLogger(__name__)


def _import_detrex():
    try:
        import detectron2  # noqa: F401
        import detrex
    except ImportError as e:
        raise ValueError(
            f"det.detector.backend=detrex: detrex / detectron2 cannot be imported ({e}). They are not on "
            f"PyPI: build them from source (docs/dn_detr.md) or use backend: transformers"
        ) from e
    return detrex


def _detrex_root(detrex_root, detrex_config: str) -> Path:
    """The detrex checkout holding `projects/` (its model code is imported from there)."""
    detrex = _import_detrex()
    root = Path(detrex_root).expanduser() if detrex_root else Path(detrex.__file__).resolve().parents[1]
    if not (root / detrex_config).is_file():
        raise FileNotFoundError(
            f"det.detector.detrex_config={detrex_config!r} not found under {root}; set det.detector.detrex_root "
            f"to your detrex checkout (the folder with projects/dn_detr)"
        )
    return root


class DetrexDNDETRDetector:
    """detrex's DNDETR in eval mode behind the `Detector` interface."""

    name = "dn_detr"
    backend = "detrex"

    def __init__(
        self,
        weights,
        *,
        detrex_root=None,
        detrex_config: str = "projects/dn_detr/configs/dn_detr_r50_50ep.py",
        short_edge_length: int = 800,
        max_size: int = 1333,
        interp: str = "bilinear",
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        top_k: int = 300,
        min_conf: float = 0.0,
        max_det: int = 300,
        classes=None,
        label_map=None,
        batch_size: int = 8,
        device: str = "auto",
        half: bool = False,
    ):
        root = _detrex_root(detrex_root, detrex_config)
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))  # the config imports projects.dn_detr.modeling
        import detectron2.data.transforms as T
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import LazyConfig, instantiate

        path = Path(str(weights)).expanduser() if weights else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"det.detector.weights={weights!r}: the detrex backend needs a detrex "
                f"checkpoint file (dn_detr_r50_50ep.pth); see docs/dn_detr.md"
            )
        if interp not in PIL_FILTERS:
            raise ValueError(f"det.detector.interp={interp!r}; valid: {sorted(PIL_FILTERS)}")
        if half:
            log.warning("det.detector.half is ignored by the detrex backend (it runs in float32)")
        self.device = resolve_device(device, indexed=True)
        cfg = LazyConfig.load(str(root / detrex_config))
        cfg.model.device = self.device
        cfg.model.select_box_nums_for_evaluation = int(top_k)
        cfg.model.pixel_mean, cfg.model.pixel_std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
        self.model = instantiate(cfg.model).to(self.device).eval()
        DetectionCheckpointer(self.model).load(str(path))
        self.weights = str(path)
        self.resize = T.ResizeShortestEdge(int(short_edge_length), int(max_size), interp=PIL_FILTERS[interp])
        self.filter = OutputFilter(min_conf, max_det, classes, label_map, int(cfg.model.num_classes), where=str(path))
        self.batch_size = int(batch_size)

    def _inputs(self, frames: np.ndarray) -> list[dict]:
        inputs = []
        for frame in frames:
            image = self.resize.get_transform(frame).apply_image(frame)  # detectron2's own test resize
            inputs.append(
                {
                    "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                    "height": frame.shape[0],
                    "width": frame.shape[1],
                }
            )
        return inputs

    @torch.no_grad()
    def detect(self, frames: np.ndarray) -> list[Detections]:
        frames = check_frames(frames)
        out: list[Detections] = []
        for start in range(0, len(frames), self.batch_size):
            for result in self.model(self._inputs(frames[start : start + self.batch_size])):
                inst = result["instances"].to("cpu")
                out.append(
                    self.filter(
                        inst.pred_boxes.tensor.numpy().astype(np.float32),
                        inst.scores.numpy().astype(np.float32),
                        inst.pred_classes.numpy(),
                    )
                )
        return out
