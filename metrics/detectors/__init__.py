"""Detectors behind one small interface (`Detector.detect`), chosen by name from config.

Backends register a builder with `@register_detector("name")`; a builder takes the `detector`
config node and returns a `Detector`. Built-in backends live in modules that are imported only
when their name is asked for (ultralytics is heavy), listed in `_BACKEND_MODULES`; a backend
module added later (the DN-DETR one) only needs an entry there and a decorated builder.
A name "package.module:function" builds from any importable builder without registering it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from data.cli import InputError
from metrics.detectors.base import Detections, Detector, FakeDetector

__all__ = ["Detections", "Detector", "FakeDetector", "register_detector", "build_detector", "available_detectors"]

_BUILDERS: dict[str, Callable] = {}
_BACKEND_MODULES = {
    "yolo11": "metrics.detectors.yolo",
    "yolo": "metrics.detectors.yolo",
    "fake": "metrics.detectors.base",
    "dn_detr": "metrics.detectors.dn_detr",
}


def register_detector(*names: str):
    def deco(builder):
        for name in names:
            _BUILDERS[name] = builder
        return builder

    return deco


def available_detectors() -> list[str]:
    return sorted(set(_BUILDERS) | set(_BACKEND_MODULES))


def build_detector(cfg) -> Detector:
    """`cfg` is the `det.detector` node: `name` plus the backend's own keys."""
    name = cfg["name"]
    if ":" in name:
        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)(cfg)
    if name not in _BUILDERS and name in _BACKEND_MODULES:
        try:
            importlib.import_module(_BACKEND_MODULES[name])
        except ModuleNotFoundError as e:
            raise InputError(
                f"det.detector.name={name!r}: its backend module {_BACKEND_MODULES[name]} cannot be imported ({e})"
            ) from e
    if name not in _BUILDERS:
        raise InputError(f"det.detector.name={name!r} is unknown; valid: {available_detectors()}")
    return _BUILDERS[name](cfg)


@register_detector("fake")
def _build_fake(cfg) -> FakeDetector:
    """The same boxes on every frame: `boxes` [[x1,y1,x2,y2],...], `scores`, `labels` in config."""
    return FakeDetector.constant(cfg.get("boxes") or [], cfg.get("scores") or [], cfg.get("labels") or [])
