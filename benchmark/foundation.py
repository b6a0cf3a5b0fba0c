"""The mini profile's foundation: the models the suite trains once per store instead of
downloading them (temporal VAE, base video model, YOLO11, DN-DETR), as content-hashed parts.

A profile's `benchmark.foundation` node holds each part's settings; any config value
`foundation:<part>` (e.g. `model.svd: foundation:base_model`) names a part. `plan(cfg)` hashes each
named part (its settings, the frame size, and the hashes of the parts it is built from: the base
model is built on the VAE) and gives its folder `<dir>/<part>-<hash>`; `substitute` puts those
folders into the config, so every stage hash downstream changes when a part's settings change.
`ensure(plan)` builds the missing parts in dependency order; each writes its folder atomically (a
finished part is never rebuilt) and the base model keeps its trainer checkpoints under
`<dir>/.work/`, so a killed build resumes. `python -m benchmark.foundation [--dry-run] [key=value]`
builds (or lists) the mini profile's parts on their own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import provenance
from benchmark.stages import stage_hash
from data.atomic import atomic_write_json

PREFIX = "foundation:"
FOUNDATION_VERSION = 1  # bump when a builder changes what it writes for the same settings
DEPENDS = {"vae": (), "base_model": ("vae",), "yolo": (), "dn_detr": ()}
# validation clips (reported while training, never the test clips) start at this seed in every world
VAL_SEED = 500_000


@dataclass
class Part:
    name: str
    hash: str
    path: Path
    settings: dict

    @property
    def done(self) -> bool:
        return self.path.is_dir() or self.path.is_file()

    @property
    def record(self) -> Path:
        """<part>-<hash>.json beside the part: its settings, build time and provenance."""
        return self.path.parent / f"{self.path.stem}.json"


def references(obj: Any) -> set[str]:
    """Every part named by a `foundation:<part>` value anywhere in `obj`."""
    if isinstance(obj, dict):
        return set().union(*(references(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(references(v) for v in obj)) if obj else set()
    return {obj[len(PREFIX) :]} if isinstance(obj, str) and obj.startswith(PREFIX) else set()


def plan(cfg: dict) -> dict[str, Part]:
    """The parts `cfg` names and the parts they are built from, hashed, in dependency order."""
    node = (cfg.get("benchmark") or {}).get("foundation")
    wanted = references({k: v for k, v in cfg.items() if k != "benchmark"}) | references(
        (cfg.get("benchmark") or {}).get("eval") or {}
    )
    if not wanted:
        return {}
    if not node:
        raise ValueError(
            f"config values name foundation parts {sorted(wanted)} but the profile has no benchmark.foundation node"
        )
    unknown = sorted(wanted - set(DEPENDS))
    if unknown:
        raise ValueError(f"foundation:{unknown[0]}: unknown part; valid: {sorted(DEPENDS)}")
    order: list[str] = []

    def visit(name):
        for dep in DEPENDS[name]:
            visit(dep)
        if name not in order:
            order.append(name)

    for name in sorted(wanted):
        visit(name)
    root = Path(node.get("dir", "foundation"))
    parts: dict[str, Part] = {}
    for name in order:
        if name not in node:
            raise ValueError(f"benchmark.foundation.{name}: missing (named by a foundation:{name} value)")
        settings = {
            "part": node[name],
            "frames": node["frames"],
            "version": FOUNDATION_VERSION,
            "built_on": {d: parts[d].hash for d in DEPENDS[name]},
        }
        h = stage_hash(f"foundation_{name}", settings)
        suffix = ".pt" if name == "yolo" else ""
        parts[name] = Part(name, h, root / f"{name}-{h}{suffix}", settings)
    return parts


def substitute(obj: Any, parts: dict[str, Part]) -> Any:
    """A copy of `obj` with every `foundation:<part>` value replaced by that part's path."""
    if isinstance(obj, dict):
        return {k: substitute(v, parts) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, parts) for v in obj]
    if isinstance(obj, str) and obj.startswith(PREFIX):
        return str(parts[obj[len(PREFIX) :]].path)
    return obj


def resolve(cfg: dict) -> tuple[dict, dict[str, Part]]:
    """(cfg with every `foundation:<part>` replaced by its folder, the parts) for a resolved config."""
    parts = plan(cfg)
    return (substitute(cfg, parts), parts) if parts else (cfg, parts)


def describe(parts: dict[str, Part]) -> list[str]:
    return [
        f"  foundation {p.name:<10} {p.hash}  {'cached' if p.done else 'pending'}  {p.path}" for p in parts.values()
    ]


# ----------------------------------------------------------------------------------- building
def _clips(worlds, n: int, frames: dict, seed: int = 0):
    from data.synthetic import SyntheticDataset

    out = []
    for w in worlds:
        ds = SyntheticDataset(n, frames["clip_len"], frames["height"], frames["width"], seed=seed, world=w)
        out += [ds[i] for i in range(len(ds))]
    return out


def _build_vae(part: Part, parts, log):
    from trainers.foundation.vae import train_vae

    s, fr = part.settings["part"], part.settings["frames"]
    train_vae(
        part.path,
        _clips(s["worlds"], s["clips_per_world"], fr),
        val_clips=_clips(s["worlds"], s["val_clips_per_world"], fr, VAL_SEED),
        steps=s["steps"],
        batch_clips=s["batch_clips"],
        frames_per_clip=s["frames_per_clip"],
        lr=s["lr"],
        beta_kl=s["beta_kl"],
        seed=s["seed"],
        arch=s["arch"],
        log=log,
    )


def _build_base_model(part: Part, parts, log):
    from trainers.foundation.base_model import pretrain_base_model

    s, fr = part.settings["part"], part.settings["frames"]
    work = part.path.parent / ".work" / part.path.name
    overrides = [
        f"data={s['data']}",
        f"data.height={fr['height']}",
        f"data.width={fr['width']}",
        f"data.clip_len={fr['clip_len']}",
        f"model.tiny_frames={fr['clip_len']}",
        *s["overrides"],
    ]
    pretrain_base_model(part.path, parts["vae"].path, work, overrides=overrides, unet_arch=s["arch"], seed=s["seed"])


def _build_yolo(part: Part, parts, log):
    from metrics.detectors.train_yolo import train_yolo

    s, fr = part.settings["part"], part.settings["frames"]
    work = part.path.parent / ".work" / part.path.stem
    train_yolo(
        part.path,
        _clips(s["worlds"], s["clips_per_world"], fr),
        _clips(s["worlds"], s["val_clips_per_world"], fr, VAL_SEED),
        work_dir=work,
        arch=s["arch"],
        epochs=s["epochs"],
        imgsz=s["imgsz"],
        batch=s["batch"],
        seed=s["seed"],
        optimizer=s["optimizer"],
        lr0=s["lr0"],
    )


def _build_dn_detr(part: Part, parts, log):
    from metrics.detectors.train_dn_detr import train_dn_detr

    s, fr = part.settings["part"], part.settings["frames"]
    train_dn_detr(
        part.path,
        _clips(s["worlds"], s["clips_per_world"], fr),
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=s["seed"],
        short_edge_length=s["short_edge_length"],
        config=s["arch"],
        train_backbone_bn=s.get("train_backbone_bn", False),  # absent: the frozen norms of earlier builds
        threads=s.get("threads"),
        log=log,
    )


BUILDERS: dict[str, Callable] = {
    "vae": _build_vae,
    "base_model": _build_base_model,
    "yolo": _build_yolo,
    "dn_detr": _build_dn_detr,
}


def ensure(parts: dict[str, Part], echo=print) -> dict[str, float]:
    """Build every missing part (dependency order); returns the seconds each build took."""
    seconds = {}
    for part in parts.values():
        if part.done:
            continue
        part.path.parent.mkdir(parents=True, exist_ok=True)
        echo(f"foundation: building {part.name} -> {part.path}")
        start = time.time()
        BUILDERS[part.name](part, parts, echo)
        seconds[part.name] = time.time() - start
        atomic_write_json(
            part.record,
            {
                "part": part.name,
                "hash": part.hash,
                "seconds": seconds[part.name],
                "settings": part.settings,
                # the code, lock, libraries and torch thread count that made it: the same settings give
                # bit-identical weights only at the same thread count (docs/mini.md, "Reproducibility")
                "provenance": provenance.current(),
                # what it made, so two builds under the same hash can be compared file by file
                "sha256": provenance.files_sha256(part.path),
            },
            indent=1,
        )
        echo(f"foundation: {part.name} built in {seconds[part.name]:.0f} s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """python -m benchmark.foundation [profile=mini] [--dry-run] [key=value ...]"""
    from benchmark.config import HydraResolver

    argv = sys.argv[1:] if argv is None else argv
    profile = next((a.split("=", 1)[1] for a in argv if a.startswith("profile=")), "mini")
    overrides = [a for a in argv if "=" in a and not a.startswith("profile=")]
    resolver = HydraResolver(profile, overrides)
    parts = resolver.foundation  # the resolver substitutes foundation:<part> values and keeps the parts
    print("\n".join(describe(parts)) or f"profile {profile} names no foundation parts")
    if "--dry-run" not in argv:
        ensure(parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
