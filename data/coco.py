"""The 80-class contiguous COCO numbering used by every detector and by `Clip.labels`.

This is a fixed standard table (the order of torchvision / ultralytics / detectron2 COCO heads),
not a tunable constant, so it lives in code; which classes count as dynamic is config.
"""

from __future__ import annotations

from data.cli import InputError

COCO_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
COCO_IDS: dict[str, int] = {name: i for i, name in enumerate(COCO_NAMES)}


def coco_name(class_id: int) -> str:
    return COCO_NAMES[class_id] if 0 <= class_id < len(COCO_NAMES) else f"class{class_id}"


def coco_id(label, where: str) -> int:
    """An int COCO id or a COCO class name -> the int id; `where` names the source in errors."""
    if isinstance(label, bool):
        raise InputError(f"{where}: label {label!r} is not a COCO id or name")
    if isinstance(label, int):
        if not 0 <= label < len(COCO_NAMES):
            raise InputError(f"{where}: COCO id {label} is outside 0..{len(COCO_NAMES) - 1}")
        return label
    if isinstance(label, str) and label in COCO_IDS:
        return COCO_IDS[label]
    raise InputError(
        f"{where}: label {label!r} is neither a COCO id (0-79) nor a COCO class name such as 'car', 'truck', 'person'"
    )
