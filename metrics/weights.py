"""Where each metric's network weights come from: a local file, or `tiny` (smoke profile).

`tiny` stands for randomly initialised networks of the real classes (a scripted I3D with
StyleGAN-V's call signature, torch-fidelity's InceptionV3, ultralytics' YOLO11n), created once
under `cache_dir` and then loaded through exactly the code path real weights take.
"""

from __future__ import annotations

from pathlib import Path

from data.cli import MissingFile

TINY = "tiny"
# file names carry a version: bump it when a make_* function changes what it writes
SMOKE_FILES = {"i3d": "tiny_i3d_v1.pt", "inception": "random_inception_v1.pth", "yolo": "tiny_yolo11n_v2.pt"}

HOW_TO_GET = {
    "fvd.weights": "StyleGAN-V's i3d_torchscript.pt (https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1), "
    "or cd-fvd's i3d_pretrained_400.pt with fvd.format=cdfvd",
    "fid.weights": "torch-fidelity's weights-inception-2015-12-05-6726825d.pth (https://github.com/toshas/"
    "torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)",
    "det.detector.weights": "an ultralytics YOLO11 detection checkpoint such as yolo11x.pt "
    "(https://github.com/ultralytics/assets/releases/download/v8.3.0/yolo11x.pt)",
}
_TINY_KIND = {"fvd.weights": "i3d", "fid.weights": "inception", "det.detector.weights": "yolo"}
_TINY_DETECTORS = ("yolo11", "yolo")


def ensure_smoke_weights(cache_dir: str | Path) -> dict[str, Path]:
    """Create (once) the tiny I3D, the random Inception weights and the tiny YOLO under `cache_dir`;
    return {"i3d": path, "inception": path, "yolo": path}. Each file is written atomically, so a
    concurrent caller sees either no file or a complete one."""
    cache_dir = Path(cache_dir).expanduser()
    paths = {kind: cache_dir / name for kind, name in SMOKE_FILES.items()}
    if not paths["i3d"].is_file():
        from metrics.fvd import make_tiny_i3d

        make_tiny_i3d(paths["i3d"])
    if not paths["inception"].is_file():
        from metrics.fid import make_random_inception_weights

        make_random_inception_weights(paths["inception"])
    if not paths["yolo"].is_file():
        from metrics.detectors.yolo import make_tiny_yolo

        make_tiny_yolo(paths["yolo"])
    return paths


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _is_converted_folder(key: str, cfg, value) -> bool:
    """DN-DETR also loads a folder written by `python -m metrics.detectors.convert_dn_detr`."""
    if key != "det.detector.weights" or cfg["det"]["detector"]["name"] != "dn_detr":
        return False
    folder = Path(str(value)).expanduser()
    return folder.is_dir() and (folder / "config.json").is_file()


def resolve_weights(cfg, metrics) -> dict[str, str]:
    """{config key: local path} for the metrics asked for. Raises one error naming every key that
    is unset or points to a missing file, with how to get each file, before any work starts."""
    keys = [
        k for m, k in (("fvd", "fvd.weights"), ("fid", "fid.weights"), ("det", "det.detector.weights")) if m in metrics
    ]
    resolved, problems = {}, []
    for key in keys:
        value = _get(cfg, key)
        if key == "det.detector.weights" and value == TINY and cfg["det"]["detector"]["name"] not in _TINY_DETECTORS:
            resolved[key] = TINY  # another backend (e.g. DN-DETR) makes its own tiny model
            continue
        if value == TINY:
            resolved[key] = str(ensure_smoke_weights(cfg["cache_dir"])[_TINY_KIND[key]])
        elif value is None:
            problems.append(f"{key} is not set: give the path to {HOW_TO_GET[key]}")
        elif _is_converted_folder(key, cfg, value):
            resolved[key] = str(Path(str(value)).expanduser())  # a DN-DETR checkpoint already converted
        elif not Path(str(value)).expanduser().is_file():
            problems.append(f"{key}={value!r}: no such file; it should be {HOW_TO_GET[key]}")
        else:
            resolved[key] = str(Path(str(value)).expanduser())
    if problems:
        raise MissingFile("missing metric weights (see docs/metrics.md):\n  - " + "\n  - ".join(problems))
    return resolved
