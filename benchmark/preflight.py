"""The preflight: every input of every row opened the cheap way and checked for what it must be.

Run by `python -m benchmark.run ... --dry-run`, before any stage or submission of a real run
(`benchmark.run_table`), and alone as `lsa-bench check table=I profile=paper`. Which config keys
are inputs comes from the profile's `benchmark.check_paths` (local / hub_or_local / allow lists);
what each must be is decided here, by key:

  model.svd                  a diffusers SVD pipeline: model_index.json, every component's config,
                             the weight files of `model.variant`, each safetensors header complete
                             and holding the keys and shapes the component's config builds
  model.dino                 DINOv2: config.json (+ weights with the right keys / shapes) or the
                             official torch.hub file (converted: trainers/dinov2_hub.py); its size
                             against `benchmark.check_paths.expect.model.dino` (ViT-B/14 for the paper)
  metrics.fvd.weights        I3D (TorchScript or the piergiaj / cd-fvd state dict): loaded on the CPU,
                             one forward on a 1 x 3 x 16 x 224 x 224 clip gives 400 logits
  metrics.fid.weights        torch-fidelity's InceptionV3 state dict: loaded, one 64 x 64 frame -> 2048
  benchmark.eval.detectors.<d>.weights
                             by the detector's name: YOLO loads as an 80-class detection model whose
                             names include car and truck; DN-DETR's detrex checkpoint converts
  data.root                  nuScenes: the tables of data.version load and a sample of the camera
                             files they name exists; KITTI: label_02 / image_02 hold every sequence
                             the train and test splits name
  any hub id                 a cached snapshot is checked as a folder; otherwise, with the hub reachable,
                             the files exist and a gated repo is named with what to do; with the hub
                             unreachable, the line says so and how to pre-download it with `hf download`

Each failure is one line: the key (and dataset), the file, what was expected and what was found,
and the rows that use it. `run_preflight` returns them; `refuse` raises `PreflightFailed` (a
MissingFile: exit 2) when there is any.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.config import _looks_like_hub_id as looks_like_hub_id
from data.cli import MissingFile

DETECTOR_KEYS = "benchmark.eval.detectors."
_ABSENT = object()
NUSCENES_TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
NUSCENES_SAMPLE_FILES = 20  # camera files checked for existence, spread over sample_data
SVD_COMPONENTS = {  # model_index.json entry -> (config file, class, weight file stem or None)
    "unet": ("config.json", "UNetSpatioTemporalConditionModel", "diffusion_pytorch_model"),
    "vae": ("config.json", "AutoencoderKLTemporalDecoder", "diffusion_pytorch_model"),
    "image_encoder": ("config.json", "CLIPVisionModelWithProjection", "model"),
    "feature_extractor": ("preprocessor_config.json", None, None),
    "scheduler": ("scheduler_config.json", "EulerDiscreteScheduler", None),
}


class PreflightFailed(MissingFile):
    """An input of the run is missing or is not what it must be; nothing was started."""


@dataclass(frozen=True)
class Problem:
    """One failed check: `key = file: expected ...; found ...`."""

    key: str
    file: str
    expected: str
    found: str

    def line(self) -> str:
        if self.file in ("", "<null>"):
            return f"{self.key} is not set: expected {self.expected}; found {self.found}"
        return f"{self.key} = {self.file}: expected {self.expected}; found {self.found}"


@dataclass
class Report:
    checked: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (key, value) -> rows
    problems: dict[Problem, list[str]] = field(default_factory=dict)  # problem -> rows

    def lines(self) -> list[str]:
        return [f"{p.line()}  [rows: {', '.join(sorted(set(rows)))}]" for p, rows in self.problems.items()]


# ---------------------------------------------------------------------------------- the driver


def select(cfg, dotted: str, default=None):
    """A dotted key of a plain-dict config (a dict walk: benchmark.stages.select builds an OmegaConf
    node per call, too slow for the many look-ups here)."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def run_preflight(cfgs: Iterable[tuple]) -> Report:
    """Check every input of the given (row name, config[, detectors used]) items; each distinct
    (key, value) is checked once. With `detectors`, only their `benchmark.eval.detectors` weights."""
    report, done = Report(), {}
    for row, cfg, *used in cfgs:
        used = set(used[0]) if used else None
        spec = select(cfg, "benchmark.check_paths", {}) or {}
        allow = set(spec.get("allow") or [])
        expect = spec.get("expect") or {}
        for kind in ("local", "hub_or_local"):
            for key in spec.get(kind) or []:
                detector = key[len(DETECTOR_KEYS) :].split(".")[0] if key.startswith(DETECTOR_KEYS) else None
                if used is not None and detector is not None and detector not in used:
                    continue
                value = select(cfg, key, _ABSENT)
                if value is _ABSENT and key.startswith("model."):
                    continue  # a key of another backbone (model.svd of an LTX row)
                if value is not _ABSENT and isinstance(value, (str, type(None))) and value in allow:
                    continue
                name = f"{key} (data={select(cfg, 'data.name', '')})" if key.startswith("data.") else key
                ident = (name, "<absent>" if value is _ABSENT else str(value), _context(key, cfg, detector))
                if ident not in done:
                    done[ident] = _check_one(key, name, value, cfg, detector, kind, expect.get(key))
                report.checked.setdefault(ident[:2], []).append(row)
                for p in done[ident]:
                    report.problems.setdefault(p, []).append(row)
    return report


def refuse(table: str, report: Report, show: Callable[[str], None] | None = None) -> None:
    """Raise PreflightFailed listing every problem, if there is any; with `show` (--dry-run) each
    problem goes there as a `preflight:` line and the error only counts them."""
    if report.problems and show is not None:
        for line in report.lines():
            show(f"preflight: {line}")
        raise PreflightFailed(
            f"table {table}: the preflight found {len(report.problems)} problem(s) with the run's inputs "
            f"(the preflight: lines above); a real run would refuse to start"
        )
    if report.problems:
        raise PreflightFailed(
            f"table {table}: the preflight found {len(report.problems)} problem(s) with the run's inputs; "
            f"nothing was started (docs/benchmark.md, 'Preflight'):\n  " + "\n  ".join(report.lines())
        )


def _context(key: str, cfg, detector: str | None) -> str:
    """What else decides the check's outcome (format, variant, dataset splits)."""
    if key == "model.svd":
        return f"{select(cfg, 'model.variant')}|{select(cfg, 'model.revision')}"
    if key == "model.dino":
        return str(select(cfg, "model.revision"))
    if key == "metrics.fvd.weights":
        return str(select(cfg, "metrics.fvd.format", "auto"))
    if detector:
        return str(select(cfg, f"{DETECTOR_KEYS}{detector}.name"))
    if key == "data.root":
        return json.dumps(
            [
                select(cfg, "data.name"),
                select(cfg, "data.version"),
                select(cfg, "data.train.scenes"),
                select(cfg, "data.test.scenes"),
                select(cfg, "data.split_dir"),
            ],
            default=str,
        )
    return ""


def _check_one(key, name, value, cfg, detector, kind, expect) -> list[Problem]:
    if value is _ABSENT:
        return [Problem(name, "<absent>", "a key of the composed config", "no such key (fix benchmark.check_paths)")]
    if value is None:
        if key == "data.root":
            ds = select(cfg, "data.name", "")
            how = f"benchmark.data_roots.{ds}=/path/to/{ds} (or the profile's environment variable), or data.root=/path"
            return [Problem(name, "<null>", f"the dataset folder: {how}", "null")]
        return [Problem(name, "<null>", f"a path: give it on the command line, {key}=/path", "null")]
    value = str(value)
    checker = _checker(key, cfg, detector)
    try:
        if kind == "hub_or_local" and not Path(value).expanduser().exists() and looks_like_hub_id(value):
            return check_hub(name, value, cfg, key, checker, expect)
        path = Path(value).expanduser()
        if not path.exists():
            what = "dataset folder" if key.startswith("data.") else "file or folder"
            return [Problem(name, value, f"an existing {what} ({_where_to_get(key)})", "nothing at that path")]
        return checker(name, path, cfg, expect) if checker else []
    except Exception as e:  # a checker's own failure is a finding, never a crash of the preflight
        return [Problem(name, value, "a readable input", f"{type(e).__name__}: {_first_line(e)}")]


def _checker(key: str, cfg, detector: str | None) -> Callable | None:
    if key == "model.svd":
        return check_svd_folder
    if key == "model.dino":
        return check_dino
    if key == "metrics.fvd.weights":
        return check_i3d
    if key == "metrics.fid.weights":
        return check_inception
    if detector:
        det = str(select(cfg, f"{DETECTOR_KEYS}{detector}.name", detector))
        if det == "dn_detr":
            return functools.partial(check_dn_detr, detector=detector)
        return check_yolo if det.startswith("yolo") else None
    if key == "data.root":
        return {"nuscenes": check_nuscenes, "kitti": check_kitti}.get(str(select(cfg, "data.name")))
    return None


def _where_to_get(key: str) -> str:
    if key.startswith("data."):
        return "docs/data.md says how to get it"
    return "`lsa-bench weights fetch` downloads it; docs/metrics.md says where it comes from"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# --------------------------------------------------------------------------------------- hub ids


class HubClient:
    """The three hub calls the preflight makes (tests replace `HUB` with a stub)."""

    def cached_snapshot(self, repo_id: str, revision: str | None) -> Path | None:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError and friends: not cached
            return None

    def files(self, repo_id: str, revision: str | None) -> tuple[list[str], object]:
        """(file names, gated flag) of the repo at `revision`."""
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo_id, revision=revision, timeout=15)
        return [s.rfilename for s in info.siblings or []], getattr(info, "gated", False)

    def auth_check(self, repo_id: str) -> None:
        from huggingface_hub import auth_check

        auth_check(repo_id)


HUB = HubClient()


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip() not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _predownload(repo_id: str, key: str, revision: str | None) -> str:
    folder = f"$LSA_BENCH_WEIGHTS/{repo_id.split('/')[-1]}"
    rev = f" --revision {revision}" if revision else ""
    return (
        f"pre-download it on a machine with access: `hf download {repo_id}{rev} --local-dir {folder}` "
        f"(or `lsa-bench weights fetch`), then set {key}={folder}"
    )


def check_hub(name: str, repo_id: str, cfg, key: str, checker, expect) -> list[Problem]:
    revision = select(cfg, "model.revision")
    cached = HUB.cached_snapshot(repo_id, revision)
    if cached is not None:
        return checker(name, cached, cfg, expect) if checker else []
    if hub_offline():
        return [
            Problem(
                name,
                repo_id,
                "a local folder, or a hub id in the local Hugging Face cache",
                f"not in the cache and the hub is offline (HF_HUB_OFFLINE is set); {_predownload(repo_id, key, revision)}",
            )
        ]
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        files, gated = HUB.files(repo_id, revision)
    except GatedRepoError:
        files, gated = None, True
    except RevisionNotFoundError:
        return [Problem(name, repo_id, f"revision {revision} of the repo", "no such revision (model.revision)")]
    except RepositoryNotFoundError:
        return [
            Problem(name, repo_id, "a model repo on the Hugging Face hub", "no such repo (or private: set HF_TOKEN)")
        ]
    except Exception as e:  # no route, DNS, proxy, timeout: the hub is not reachable from here
        return [
            Problem(
                name,
                repo_id,
                "a local folder, or a hub id reachable from this machine",
                f"the hub is not reachable ({type(e).__name__}: {_first_line(e)}); {_predownload(repo_id, key, revision)}",
            )
        ]
    problems = []
    if gated:
        try:
            HUB.auth_check(repo_id)
        except GatedRepoError:
            problems.append(
                Problem(
                    name,
                    repo_id,
                    "access to a gated repo",
                    f"no access: accept the licence at https://huggingface.co/{repo_id} with your account, then set "
                    f"HF_TOKEN to a token of that account (or run `hf auth login`) on every machine that loads it",
                )
            )
    if files is not None:
        need = required_hub_files(key, cfg, files)
        missing = [f for f in need if f not in set(files)]
        if missing:
            problems.append(Problem(name, repo_id, f"the files {need}", f"missing in the repo: {missing}"))
    return problems


def required_hub_files(key: str, cfg, files: list[str]) -> list[str]:
    """The files a hub repo must hold for `key` (weights: any one of the accepted names)."""
    if key == "model.svd":
        variant = select(cfg, "model.variant")
        need = ["model_index.json"]
        for comp, (config, _, stem) in SVD_COMPONENTS.items():
            need.append(f"{comp}/{config}")
            if stem:
                names = _weight_names(stem, variant)
                need.append(next((f"{comp}/{n}" for n in names if f"{comp}/{n}" in files), f"{comp}/{names[0]}"))
        return need
    if key == "model.dino":
        names = _weight_names("model", None)
        return ["config.json", next((n for n in names if n in files), names[0])]
    return []


def _weight_names(stem: str, variant: str | None) -> list[str]:
    v = f".{variant}" if variant else ""
    pt = "pytorch_model" if stem == "model" else stem
    return [f"{stem}{v}.safetensors", f"{stem}{v}.safetensors.index.json", f"{pt}{v}.bin", f"{pt}{v}.bin.index.json"]


# ------------------------------------------------------------------------------- safetensors headers


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header; raises on a truncated file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"header length {n} does not fit the file's {size} bytes")
        header = json.loads(f.read(n))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"truncated: the header needs {8 + n + end} bytes, the file has {size}")
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def weight_shapes(folder: Path, stem: str, variant: str | None) -> tuple[dict[str, tuple[int, ...]], str]:
    """Tensor shapes of a component's weights (safetensors, single or sharded) and the file read;
    ({}, name) for a .bin file (pickled: not opened here), FileNotFoundError when none exists."""
    for name in _weight_names(stem, variant):
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            return {k: s for k, (_, s) in safetensors_header(path).items()}, name
        if name.endswith(".safetensors.index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            shapes = {}
            for shard in shards:
                shapes.update({k: s for k, (_, s) in safetensors_header(folder / shard).items()})
            return shapes, name
        return {}, name
    raise FileNotFoundError(f"none of {_weight_names(stem, variant)}")


_SKIPPED_BUFFERS = (".position_ids", ".num_batches_tracked")


def _canonical(key: str) -> str:
    """transformers 4 and 5 name DINOv2 / CLIP attention projections differently."""
    for old, new in (
        ("attention.attention.query", "attention.q_proj"),
        ("attention.attention.key", "attention.k_proj"),
        ("attention.attention.value", "attention.v_proj"),
        ("attention.output.dense", "attention.o_proj"),
    ):
        key = key.replace(old, new)
    return key


def compare_shapes(found: dict, expected: dict) -> str | None:
    """None when the key sets and shapes agree (names compared in canonical form), else a summary."""
    found = {_canonical(k): tuple(v) for k, v in found.items()}
    expected = {_canonical(k): tuple(v) for k, v in expected.items()}
    # buffers older files saved and the loaders skip (CLIP's position_ids became non-persistent)
    found = {k: v for k, v in found.items() if k in expected or not k.endswith(_SKIPPED_BUFFERS)}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [f"{k} {found[k]} vs {expected[k]}" for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    if not (missing or extra or shapes):
        return None
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra), ("other shapes", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    return "; ".join(parts)


def _meta_state_shapes(build: Callable) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ SVD


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_svd_folder(name: str, folder: Path, cfg, expect=None) -> list[Problem]:
    variant = select(cfg, "model.variant")
    index = folder / "model_index.json"
    if not index.is_file():
        return [
            Problem(name, str(folder), "a diffusers SVD pipeline folder with model_index.json", "no model_index.json")
        ]
    try:
        idx = _read_json(index)
    except ValueError as e:
        return [Problem(name, str(index), "JSON", f"unreadable: {_first_line(e)}")]
    if idx.get("_class_name") != "StableVideoDiffusionPipeline":
        return [Problem(name, str(index), "_class_name StableVideoDiffusionPipeline", str(idx.get("_class_name")))]
    problems = []
    for comp, (config_name, cls, stem) in SVD_COMPONENTS.items():
        if comp not in idx:
            problems.append(Problem(name, str(index), f"a component {comp}", "not listed"))
            continue
        config_path = folder / comp / config_name
        if not config_path.is_file():
            problems.append(Problem(name, str(config_path), f"the {comp} config", "no such file"))
            continue
        try:
            config = _read_json(config_path)
        except ValueError as e:
            problems.append(Problem(name, str(config_path), "JSON", f"unreadable: {_first_line(e)}"))
            continue
        found_cls = config.get("_class_name") or (config.get("architectures") or [None])[0]
        if cls and found_cls != cls:
            problems.append(Problem(name, str(config_path), f"class {cls}", str(found_cls)))
            continue
        if not stem:
            continue
        try:
            shapes, file = weight_shapes(folder / comp, stem, variant)
        except FileNotFoundError as e:
            problems.append(Problem(name, str(folder / comp), f"the weights of variant {variant}", str(e)))
            continue
        except ValueError as e:
            problems.append(Problem(name, str(folder / comp), "a complete safetensors file", _first_line(e)))
            continue
        if shapes:
            diff = compare_shapes(shapes, _meta_state_shapes(lambda c=comp, p=config_path: _build_component(c, p)))
            if diff:
                problems.append(Problem(name, str(folder / comp / file), f"the tensors its {config_name} builds", diff))
    return problems


def _build_component(comp: str, config_path: Path):
    if comp == "image_encoder":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(config_path.parent))
    import diffusers

    config = _read_json(config_path)
    return getattr(diffusers, config["_class_name"]).from_config(config)


# --------------------------------------------------------------------------------------- DINOv2


def check_dino(name: str, path: Path, cfg, expect=None) -> list[Problem]:
    from trainers.dinov2_hub import hub_config, is_hub_checkpoint, load_hub_dinov2, load_hub_state_dict

    if is_hub_checkpoint(path):
        try:
            config = hub_config(load_hub_state_dict(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_hub_dinov2(path, device="meta")
        except Exception as e:
            return [Problem(name, str(path), "the official DINOv2 torch.hub state dict", _first_line(e))]
        return _dino_size(name, str(path), config.to_dict(), expect)
    if path.is_file():
        return [Problem(name, str(path), "a DINOv2 folder (config.json) or the torch.hub .pth file", "another file")]
    config_path = path / "config.json"
    if not config_path.is_file():
        return [Problem(name, str(path), "a transformers DINOv2 folder with config.json", "no config.json")]
    config = _read_json(config_path)
    if config.get("model_type") != "dinov2":
        return [Problem(name, str(config_path), "model_type dinov2", str(config.get("model_type")))]
    problems = _dino_size(name, str(config_path), config, expect)
    try:
        shapes, file = weight_shapes(path, "model", None)
    except (FileNotFoundError, ValueError) as e:
        return problems + [Problem(name, str(path), "DINOv2 weights (model.safetensors)", _first_line(e))]
    if shapes:
        from transformers import Dinov2Config, Dinov2Model

        diff = compare_shapes(shapes, _meta_state_shapes(lambda: Dinov2Model(Dinov2Config.from_pretrained(path))))
        if diff:
            problems.append(Problem(name, str(path / file), "the tensors of its config.json", diff))
    return problems


def _dino_size(name: str, file: str, config: dict, expect) -> list[Problem]:
    if not expect:
        return []
    found = {k: config.get(k) for k in expect}
    if found != dict(expect):
        return [Problem(name, file, f"DINOv2 with {dict(expect)}", str(found))]
    return []


# ------------------------------------------------------------------------------- metric networks


def check_i3d(name: str, path: Path, cfg, expect=None) -> list[Problem]:
    import torch

    from metrics.fvd import I3DFeatures

    fmt = str(select(cfg, "metrics.fvd.format", "auto"))
    dim = int(select(cfg, "metrics.fvd.feature_dim", 400) or 400)
    try:
        net = I3DFeatures(path, fmt, "cpu", dim)
        out = net(torch.zeros(1, 3, 16, 224, 224))
    except Exception as e:
        return [Problem(name, str(path), "an I3D: TorchScript (StyleGAN-V) or cd-fvd's state dict", _first_line(e))]
    if out.shape != (1, dim):
        return [Problem(name, str(path), f"I3D logits of shape (1, {dim})", str(out.shape))]
    return []


def check_inception(name: str, path: Path, cfg, expect=None) -> list[Problem]:
    import numpy as np

    from metrics.fid import InceptionFeatures

    try:
        net = InceptionFeatures(path, "cpu", batch_size=1)
        out = net(np.zeros((1, 64, 64, 3), np.uint8))
    except Exception as e:
        return [
            Problem(
                name,
                str(path),
                "torch-fidelity's InceptionV3 (weights-inception-2015-12-05-6726825d.pth; pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth is the same network)",
                _first_line(e),
            )
        ]
    if out.shape != (1, 2048):
        return [Problem(name, str(path), "2048 pool3 features", str(out.shape))]
    return []


def check_yolo(name: str, path: Path, cfg, expect=None) -> list[Problem]:
    from metrics.detectors.yolo import YOLODetector

    try:
        det = YOLODetector(path, device="cpu")
    except Exception as e:
        return [
            Problem(name, str(path), "an ultralytics YOLO11 detection checkpoint (80 COCO classes)", _first_line(e))
        ]
    names = {str(n).lower() for n in dict(det.model.names).values()}
    if not {"car", "truck"} <= names:
        return [Problem(name, str(path), "class names including car and truck", f"{sorted(names)[:10]}")]
    return []


def check_dn_detr(name: str, path: Path, cfg, expect=None, detector: str = "dn_detr") -> list[Problem]:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return [Problem(name, str(path), "a converted DN-DETR folder with config.json", "no config.json")]
        model_type = _read_json(config).get("model_type")
        if model_type != "dab-detr":
            return [
                Problem(
                    name,
                    str(config),
                    "model_type dab-detr (python -m metrics.detectors.convert_dn_detr)",
                    str(model_type),
                )
            ]
        return []
    from metrics.detectors.convert_dn_detr import convert_state_dict, load_detrex_state_dict

    node = select(cfg, f"{DETECTOR_KEYS}{detector}", {}) or {}
    trust = bool(node.get("trust_pickle") or select(cfg, "metrics.det.detector.trust_pickle", False))
    try:
        convert_state_dict(load_detrex_state_dict(path, trust_pickle=trust), num_heads=int(node.get("num_heads", 8)))
    except Exception as e:
        return [
            Problem(
                name, str(path), "detrex's dn_detr_r50_50ep.pth (converts to DabDetrForObjectDetection)", _first_line(e)
            )
        ]
    return []


# ------------------------------------------------------------------------------------- datasets


def check_nuscenes(name: str, root: Path, cfg, expect=None) -> list[Problem]:
    version = str(select(cfg, "data.version", "v1.0-trainval"))
    folder = root / version
    if not folder.is_dir():
        return [Problem(name, str(root), f"the nuScenes tables in {version}/", f"no folder {folder}")]
    tables, problems = {}, []
    for table in NUSCENES_TABLES:
        path = folder / f"{table}.json"
        try:
            rows = json.loads(path.read_text())
            if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or "token" not in rows[0]:
                raise ValueError("not a non-empty list of records with a token")
            tables[table] = rows
        except FileNotFoundError:
            problems.append(Problem(name, str(path), f"the {table} table", "no such file"))
        except ValueError as e:
            problems.append(Problem(name, str(path), f"the {table} table (JSON list of records)", _first_line(e)))
    if problems:
        return problems
    camera = str(select(cfg, "data.camera", "CAM_FRONT"))
    files = [r.get("filename", "") for r in tables["sample_data"]]
    files = [f for f in files if f"/{camera}/" in f"/{f}"]
    if not files:
        return [Problem(name, str(folder / "sample_data.json"), f"{camera} images", "none referenced")]
    step = max(1, len(files) // NUSCENES_SAMPLE_FILES)
    sample = files[::step][:NUSCENES_SAMPLE_FILES]
    absent = [f for f in sample if not (root / f).is_file()]
    if absent:
        problems.append(
            Problem(
                name,
                str(root),
                f"the {camera} files sample_data.json names",
                f"{len(absent)} of {len(sample)} checked absent, e.g. {absent[0]}",
            )
        )
    return problems


def check_kitti(name: str, root: Path, cfg, expect=None) -> list[Problem]:
    split_dir = root / str(select(cfg, "data.split_dir", "training"))
    scenes = []
    for split in ("train", "test"):
        scenes += list(select(cfg, f"data.{split}.scenes", []) or [])
    from data.kitti import scene_names

    scenes = list(dict.fromkeys(scene_names(scenes)))
    problems = []
    labels = [s for s in scenes if not (split_dir / "label_02" / f"{s}.txt").is_file()]
    images = [s for s in scenes if not any((split_dir / "image_02" / s).glob("*.png"))]
    if labels:
        problems.append(
            Problem(
                name,
                str(split_dir / "label_02"),
                f"label files of the {len(scenes)} sequences the splits name",
                f"missing {labels}",
            )
        )
    if images:
        problems.append(
            Problem(
                name,
                str(split_dir / "image_02"),
                f"PNG frames of the {len(scenes)} sequences the splits name",
                f"none for {images}",
            )
        )
    if not labels:
        from data.kitti import read_label_file

        try:
            read_label_file(split_dir / "label_02" / f"{scenes[0]}.txt")
        except Exception as e:
            problems.append(
                Problem(name, str(split_dir / "label_02" / f"{scenes[0]}.txt"), "KITTI tracking labels", _first_line(e))
            )
    return problems
