"""YOLOv11 (any ultralytics YOLO detection checkpoint) behind the `Detector` interface.

Offline by construction: ultralytics would otherwise try to reach the internet (a bare weights
name such as "yolo11x.pt" is downloaded, missing packages are pip-installed, settings go to the
home folder). The environment below is set before ultralytics is first imported, with
`setdefault` so a user's own choice wins; weights are accepted only as a path to an existing file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from data.cache import bench_cache_root  # no ultralytics import behind it


def _writable_config_dir() -> str:
    for candidate in (bench_cache_root() / "ultralytics", Path(tempfile.gettempdir()) / "lsa-bench-ultralytics"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK):
                return str(candidate)
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="lsa-bench-ultralytics-")


os.environ.setdefault("YOLO_OFFLINE", "1")  # no connectivity checks, no hub calls
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install at run time
os.environ.setdefault("YOLO_VERBOSE", "false")
if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = _writable_config_dir()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.atomic import atomic_path  # noqa: E402
from data.cli import InputError, MissingFile  # noqa: E402
from data.device import keeps_torch_threads, resolve_device  # noqa: E402
from metrics.detectors import register_detector  # noqa: E402
from metrics.detectors.base import COCO_NUM_CLASSES, Detections, check_frames  # noqa: E402


class YOLODetector:
    """ultralytics YOLO on RGB uint8 frames, batched, with class and confidence filters."""

    name = "yolo11"

    def __init__(
        self,
        weights: str | Path,
        imgsz: int = 640,
        min_conf: float = 0.001,
        nms_iou: float = 0.7,
        max_det: int = 300,
        batch_size: int = 16,
        classes: list[int] | None = None,
        device: str = "auto",
        half: bool = False,
        label_map: dict | None = None,
    ):
        from ultralytics import YOLO

        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise MissingFile(
                f"det.detector.weights={weights!r}: no such file. YOLO weights are read from a local "
                f"path only (a bare name like 'yolo11x.pt' would start a download); see docs/metrics.md"
            )
        try:
            self.model = YOLO(str(path), task="detect")
        except Exception as e:  # ultralytics raises many types for a bad file
            raise InputError(
                f"det.detector.weights={str(path)!r} is not an ultralytics YOLO detection "
                f"checkpoint: {type(e).__name__}: {e}"
            ) from e
        if self.model.task != "detect":
            raise InputError(f"{path}: a YOLO '{self.model.task}' model, not a detection model")
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        if not self.label_map and len(self.model.names) != COCO_NUM_CLASSES:
            raise InputError(
                f"{path}: the model has {len(self.model.names)} classes, not the 80 COCO classes; "
                f"set det.detector.label_map to map its ids to COCO ids"
            )
        self.weights, self.imgsz, self.min_conf, self.nms_iou = str(path), int(imgsz), float(min_conf), float(nms_iou)
        self.max_det, self.batch_size, self.half = int(max_det), int(batch_size), bool(half)
        self.device = resolve_device(device, indexed=True)
        self.half = self.half and self.device.startswith("cuda")
        # class filter in the model's own ids (ultralytics filters before NMS's max_det cut)
        self.model_classes = None
        if classes is not None:
            inverse = {v: k for k, v in self.label_map.items()} if self.label_map else None
            self.model_classes = [inverse[c] for c in classes if c in inverse] if inverse else [int(c) for c in classes]

    def detect(self, frames: np.ndarray) -> list[Detections]:
        frames = check_frames(frames)
        out: list[Detections] = []
        for start in range(0, len(frames), self.batch_size):
            # ultralytics reads numpy images as BGR (OpenCV order): flip the channels
            bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames[start : start + self.batch_size]]
            with keeps_torch_threads():
                results = self.model.predict(
                    bgr,
                    imgsz=self.imgsz,
                    conf=self.min_conf,
                    iou=self.nms_iou,
                    max_det=self.max_det,
                    classes=self.model_classes,
                    device=self.device,
                    half=self.half,
                    verbose=False,
                )
            out.extend(self._to_detections(r) for r in results)
        return out

    def _to_detections(self, result) -> Detections:
        b = result.boxes
        labels = b.cls.cpu().numpy().astype(np.int64)
        if self.label_map:
            keep = np.array([int(c) in self.label_map for c in labels], dtype=bool)
            labels = np.array([self.label_map[int(c)] for c in labels[keep]], dtype=np.int64)
            return Detections(b.xyxy.cpu().numpy()[keep], b.conf.cpu().numpy()[keep], labels)
        return Detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), labels)


@register_detector("yolo11", "yolo")
def build_yolo(cfg) -> YOLODetector:
    return YOLODetector(
        weights=cfg["weights"],
        imgsz=cfg.get("imgsz", 640),
        min_conf=cfg.get("min_conf", 0.001),
        nms_iou=cfg.get("nms_iou", 0.7),
        max_det=cfg.get("max_det", 300),
        batch_size=cfg.get("batch_size", 16),
        classes=cfg.get("classes"),
        device=cfg.get("device", "auto"),
        half=cfg.get("half", False),
        label_map=cfg.get("label_map"),
    )


def make_tiny_yolo(
    path: str | Path,
    seed: int = 0,
    confident_class: int = 2,
    logit: float = 0.45,
    score_spread: float = 0.2,
    calib_size: int = 128,
    model_yaml: str = "yolo11n.yaml",
) -> Path:
    """Save an untrained YOLO11n (built from ultralytics' yolo11n.yaml, offline) as a .pt file.

    `model_yaml` builds another size the same way (yolo11x.yaml: the full-size detector whose
    time and memory the performance harness measures).

    Straight from its initialisation the net's activations vanish: every frame gets the same
    boxes with scores near 0, and nothing would pass a 0.6 reference threshold. Two fixes make it
    a useful smoke detector: BatchNorm statistics are set from one pass over random smooth images
    (so the features, and thus scores and boxes, depend on the input), and the class-logit bias
    of `confident_class` (car) is set to `logit`, the others to -6, so the untrained net reports
    cars with scores around sigmoid(logit), varying with the input. The defaults put the scores
    on both sides of the protocol's 0.6 cut-offs (reference and mIoU): measured on the smoke test
    clips, 10th-90th percentile 0.37-0.89 on real frames and 0.61-0.63 on the smoke profile's
    generated frames, so mAP and mIoU both take non-trivial values.
    """
    from ultralytics import YOLO

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLO(model_yaml, task="detect")
        net = model.model
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        calib = torch.nn.functional.interpolate(
            torch.rand(8, 3, 8, 8), size=(calib_size, calib_size), mode="bilinear", align_corners=False
        )
        net.train()
        with torch.no_grad():
            net(calib)
        net.eval()
        for branch in net.model[-1].cv3:  # per-scale class branches; last layer is a Conv2d
            with torch.no_grad():
                branch[-1].bias.fill_(-6.0)
                branch[-1].bias[confident_class] = logit
                branch[-1].weight.mul_(score_spread)  # input-dependent part of the logit
    with atomic_path(path) as tmp:
        model.save(str(tmp))
    return path
