"""The sanity report of a profile with trained models (results/<profile>/sanity.md and .json):
does each metric separate real, generated and noise videos in this world?

- detectors: COCO mAP of each detector on the real test frames against the clips' exact boxes
  (det.reference=dataset), and on uniform noise frames of the same size (should be ~0);
- FVD and FID: the test clips are split into two disjoint halves A (even indices) and B (odd).
  real A vs real B, real A vs generated B (each generated set given, e.g. the untrained network's
  and a fine-tuned model's generations of the B clips) and real A vs noise B: every comparison has
  the same number of videos per side, so the Frechet distances' sample-size bias is the same.
A metric "separates" when real-vs-real < every real-vs-generated < real-vs-noise; the report says
which comparison breaks the order otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from data.atomic import atomic_write_json
from data.clip import Clip


def noise_videos(like: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, np.asarray(v).shape, dtype=np.uint8) for v in like]


def _with(cfg, **node) -> object:
    return OmegaConf.merge(cfg, OmegaConf.create(node))


def detector_sanity(clips: Sequence[Clip], detectors: Mapping[str, dict], cfg, seed: int = 0) -> dict:
    """{detector: {"real": mAP %, "noise": mAP %}} on the clips' frames against their exact boxes."""
    from metrics.evaluate import evaluate

    out = {}
    noise = noise_videos([c.frames for c in clips], seed)
    for name, settings in detectors.items():
        c = _with(cfg, metrics=["det"], det={"reference": "dataset", "detector": dict(settings)})
        real = evaluate(list(clips), [c_.frames for c_ in clips], c, progress=False)["det"]
        fake = evaluate(list(clips), noise, c, progress=False)["det"]
        out[name] = {
            "real": real["mAP"],
            "noise": fake["mAP"],
            "mIoU_real": real.get("mIoU"),
            "protocol": real.get("protocol"),
        }
    return out


def frechet_sanity(clips: Sequence[Clip], generated: Mapping[str, Sequence[np.ndarray]], cfg, seed: int = 0) -> dict:
    """{metric: {"real_vs_real", "real_vs_noise", "generated": {name: value}, "verdict", "n_per_side"}}.

    `generated[name][i]` is the generation for clip i (all clips; only the B half is used)."""
    from metrics.evaluate import evaluate

    if len(clips) < 4:
        raise ValueError(f"sanity: {len(clips)} test clips; the two halves need at least 2 videos each")
    real = [np.asarray(c.frames) for c in clips]
    a, b = real[0::2], real[1::2]
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    c = _with(cfg, metrics=["fvd", "fid"])
    scores = {
        "real_vs_real": evaluate(a, b, c, progress=False),
        "real_vs_noise": evaluate(a, noise_videos(b, seed), c, progress=False),
    }
    gen_scores = {
        name: evaluate(a, [np.asarray(v) for v in list(videos)[1::2][:n]], c, progress=False)
        for name, videos in generated.items()
    }
    out = {}
    for m in ("fvd", "fid"):
        rr, rn = scores["real_vs_real"][m]["value"], scores["real_vs_noise"][m]["value"]
        gen = {name: s[m]["value"] for name, s in gen_scores.items()}
        out[m] = {
            "real_vs_real": rr,
            "real_vs_noise": rn,
            "generated": gen,
            "n_per_side": n,
            "verdict": verdict(rr, gen, rn),
        }
    return out


def verdict(real_vs_real: float, generated: Mapping[str, float], real_vs_noise: float) -> str:
    broken = []
    if real_vs_real >= real_vs_noise:
        broken.append(f"real-vs-real {real_vs_real:.4g} >= real-vs-noise {real_vs_noise:.4g}")
    for name, v in generated.items():
        if not real_vs_real < v:
            broken.append(f"{name} {v:.4g} <= real-vs-real {real_vs_real:.4g}")
        if not v < real_vs_noise:
            broken.append(f"{name} {v:.4g} >= real-vs-noise {real_vs_noise:.4g}")
    return "separates" if not broken else "does NOT separate: " + "; ".join(broken)


def render_markdown(report: dict) -> str:
    lines = [f"# Sanity report ({report.get('profile', '?')})", "", report.get("note", ""), ""]
    if report.get("foundation"):
        lines += ["## Foundation", "", "| part | measure | value |", "|---|---|---|"]
        lines += [f"| {k} | {m} | {v} |" for k, d in report["foundation"].items() for m, v in d.items()]
        lines.append("")
    if report.get("detectors"):
        lines += [
            "## Detectors on the real test frames (exact boxes as reference)",
            "",
            "| detector | mAP real (%) | mAP noise (%) |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {_fmt(d['real'])} | {_fmt(d['noise'])} |" for k, d in report["detectors"].items()]
        lines.append("")
    for m, d in (report.get("frechet") or {}).items():
        lines += [
            f"## {m.upper()} ({d['n_per_side']} videos per side)",
            "",
            "| comparison | value |",
            "|---|---|",
            f"| real A vs real B | {_fmt(d['real_vs_real'])} |",
        ]
        lines += [f"| real A vs {name} B | {_fmt(v)} |" for name, v in d["generated"].items()]
        lines += [f"| real A vs noise B | {_fmt(d['real_vs_noise'])} |", "", f"Verdict: {d['verdict']}", ""]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "sanity.json", json.loads(json.dumps(report, default=str)))
    (out_dir / "sanity.md").write_text(render_markdown(report))
    return {"json": out_dir / "sanity.json", "md": out_dir / "sanity.md"}


def world_report(
    profile: str = "mini",
    overrides: Sequence[str] = (),
    dataset: str = "mini_nuscenes",
    stand_ins: Sequence[str] = ("source", "kitti"),
    echo=print,
) -> dict:
    """The report before any table ran: the `dataset` world's test clips as real videos, and the
    test clips of other worlds (`stand_ins`, the same seeds) in place of generated videos: a
    metric that cannot tell the target world from the source world cannot rank fine-tuning.
    Detectors are scored when their foundation parts are built."""
    from benchmark.config import HydraResolver
    from benchmark.foundation import resolve
    from data.registry import build_dataset
    from data.synthetic import SyntheticDataset

    resolver = HydraResolver(profile, [f"data={dataset}", *overrides])
    cfg = resolver.base
    data = OmegaConf.create(cfg["data"])
    clips = [c for c in build_dataset(data, "test")]
    metrics_cfg = OmegaConf.create(cfg["metrics"])
    others = {
        f"{w} world": [
            SyntheticDataset(len(clips), data.clip_len, data.height, data.width, data.test.seed, data.fps, w)[i].frames
            for i in range(len(clips))
        ]
        for w in stand_ins
    }
    report = {
        "profile": profile,
        "dataset": dataset,
        "n_test_clips": len(clips),
        "note": (
            "Before any table ran: the generated sets are other worlds' clips (stand-ins); the tables' "
            "generations replace them."
        ),
        "frechet": frechet_sanity(clips, others, metrics_cfg),
    }
    cfg, _ = resolve(cfg)  # foundation:<part> -> its folder (a no-op once substituted)
    dets = {}
    for name, settings in cfg["benchmark"]["eval"]["detectors"].items():
        if not Path(str(settings.get("weights"))).exists():
            echo(f"sanity: detector {name}: {settings.get('weights')} is not built; skipped")
            continue
        dets[name] = dict(settings)
    report["detectors"] = detector_sanity(clips, dets, metrics_cfg) if dets else {}
    return report


def main(argv: list[str] | None = None) -> int:
    """python -m benchmark.sanity [profile=mini] [results=results] [key=value ...]: the world-level report."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    opts = {"profile": "mini", "results": "results"}
    rest = []
    for a in argv:
        k = a.split("=", 1)[0]
        if k in opts:
            opts[k] = a.split("=", 1)[1]
        else:
            rest.append(a)
    report = world_report(opts["profile"], rest)
    for kind, path in write_report(report, Path(opts["results"]) / opts["profile"]).items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
