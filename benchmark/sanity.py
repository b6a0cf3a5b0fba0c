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


def frechet_sanity(
    clips: Sequence[Clip | np.ndarray], generated: Mapping[str, Sequence[np.ndarray]], cfg, seed: int = 0
) -> dict:
    """{metric: {"real_vs_real", "real_vs_noise", "generated": {name: value}, "verdict", "n_per_side"}}.

    `generated[name][i]` is the generation for clip i (all clips; only the B half is used). Every
    video is scored once (`features_of`), then `frechet_from_features` compares the halves."""
    if len(clips) < 4:
        raise ValueError(f"sanity: {len(clips)} test clips; the two halves need at least 2 videos each")
    real = [np.asarray(getattr(c, "frames", c)) for c in clips]  # data.Clip or uint8 [T,H,W,3]
    gen_b = {name: [np.asarray(v) for v in list(videos)[1::2]] for name, videos in generated.items()}
    real_f, noise_f, *gen_f = features_of([real, noise_videos(real[1::2], seed), *gen_b.values()], cfg)
    return frechet_from_features(real_f, {name: _at_b(f, len(real)) for name, f in zip(gen_b, gen_f)}, noise_f)


def _at_b(features_b: Mapping, n_all: int) -> dict:
    """Features of the B half (odd clips) placed at their clip indices of all n_all clips (zeros at A)."""
    out = {}
    for m, f in features_b.items():
        out[m] = np.zeros((n_all, *f.shape[1:]))
        out[m][1::2] = f
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
    title = f"# Sanity report ({report.get('profile', '?')})"
    lines = [title + (f": {report['section']}" if report.get("section") else ""), "", report.get("note", ""), ""]
    if report.get("foundation"):
        lines += ["## Foundation", "", "| part | measure | value |", "|---|---|---|"]
        lines += [f"| {k} | {m} | {_fmt(v)} |" for k, d in report["foundation"].items() for m, v in d.items()]
        lines.append("")
    lines += _body(report, "##")
    for name, section in (report.get("testsets") or {}).items():
        lines += [f"## Test set {name}", ""] + _body(section, "###")
    return "\n".join(lines) + "\n"


def _body(report: dict, h: str) -> list[str]:
    lines = []
    if report.get("detectors"):
        lines += [
            f"{h} Detectors on the real test frames (exact boxes as reference)",
            "",
            "| detector | mAP real (%) | mAP noise (%) |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {_fmt(d['real'])} | {_fmt(d['noise'])} |" for k, d in report["detectors"].items()]
        lines.append("")
    for m, d in (report.get("frechet") or {}).items():
        lines += [
            f"{h} {m.upper()} ({d['n_per_side']} videos per side)",
            "",
            "| comparison | value |",
            "|---|---|",
            f"| real A vs real B | {_fmt(d['real_vs_real'])} |",
        ]
        lines += [f"| real A vs {name} B | {_fmt(v)} |" for name, v in d["generated"].items()]
        lines += [f"| real A vs noise B | {_fmt(d['real_vs_noise'])} |", "", f"Verdict: {d['verdict']}", ""]
    if report.get("checks"):
        lines += [f"- {line}" for line in report["checks"]] + [""]
    return lines


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def write_report(report: dict, out_dir: str | Path, section: str = "world") -> dict[str, Path]:
    """Put `report` as `section` ("world", "table III", ...) into <out_dir>/sanity.json and .md, keeping
    the other sections (every mini table adds its own; a rerun replaces its section)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sanity.json"
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
        # a report written before sections existed is the world-level one
        sections = old.get("sections", {"world": old} if "frechet" in old else {})
    except (json.JSONDecodeError, AttributeError):
        sections = {}  # an unreadable report is replaced, not trusted
    sections[section] = json.loads(json.dumps({**report, "section": section}, default=str))
    ordered = dict(sorted(sections.items(), key=lambda kv: (kv[0] != "world", kv[0])))
    atomic_write_json(path, {"profile": report.get("profile"), "sections": ordered})
    (out_dir / "sanity.md").write_text("\n".join(render_markdown(r) for r in ordered.values()))
    return {"sanity_json": path, "sanity_md": out_dir / "sanity.md"}


def foundation_summary(parts: Mapping) -> dict:
    """Per built foundation part: its build time and what it reports about itself (the VAE's
    reconstruction PSNR on validation clips, the base model's last training loss)."""
    out = {}
    for name, part in parts.items():
        d: dict = {"hash": part.hash}
        if part.record.exists():
            d["build seconds"] = round(float(json.loads(part.record.read_text())["seconds"]))
        if name == "vae" and (part.path / "train_log.json").exists():
            d["PSNR val (dB)"] = json.loads((part.path / "train_log.json").read_text()).get("psnr_val")
        if name == "base_model" and (part.path / "pretrain.json").exists():
            summary = json.loads((part.path / "pretrain.json").read_text()).get("trainer_summary") or {}
            d["steps"] = summary.get("global_step")
        out[name] = d
    return out


def untrained_model(parts: Mapping, echo=print) -> Path:
    """The base model's U-Net before pretraining (its architecture and seed), in an SVD folder with the
    trained VAE: the "untrained network" whose generations the report scores beside the tables'."""
    from trainers.foundation.base_model import assemble_svd, build_unet

    base = parts["base_model"]
    s = base.settings["part"]
    folder = base.path.parent / f"untrained-{base.hash}"
    if not folder.is_dir():
        echo(f"sanity: assembling the untrained network {folder}")
        unet = build_unet(num_frames=int(base.settings["frames"]["clip_len"]), seed=int(s["seed"]), **s["arch"])
        assemble_svd(folder, parts["vae"].path, unet, int(s["seed"]))
    return folder


def _untrained_generations(cfg: dict, model: Path, testset_dir: Path, into: Path, echo) -> Path:
    """The untrained network's videos of the test clips (the generate stage's settings), cached in `into`."""
    import shutil

    from benchmark.trainer_runner import TrainerRunner

    if (into / "DONE").exists():
        return into / "frames"
    shutil.rmtree(into, ignore_errors=True)  # an interrupted attempt is not trusted
    echo(f"sanity: generating the untrained network's test videos -> {into}")
    c = json.loads(json.dumps(cfg, default=str))
    c["model"]["svd"] = str(model)
    res = TrainerRunner().run_generate(None, c, None, into, test_clips=testset_dir)
    (into / "DONE").write_text("")
    return Path(res["frames"])


def _frechet(x: np.ndarray, y: np.ndarray, metric: str) -> float:
    """FVD from per-video I3D features [n, d]; FID from per-frame Inception features [n, T, d]."""
    import warnings

    from metrics.frechet import FrechetBiasWarning, frechet_distance

    if metric == "fid":
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    with warnings.catch_warnings():  # every comparison has the same n: the bias is the same for all
        warnings.simplefilter("ignore", FrechetBiasWarning)
        return frechet_distance(x, y).value


def frechet_from_features(real: Mapping, generated: Mapping[str, Mapping], noise_b: Mapping) -> dict:
    """frechet_sanity's report from features already computed: `real[m]` and `generated[name][m]` hold
    the features of every test clip in order (m = "fvd": [N, d], "fid": [N, T, d]); `noise_b[m]` those
    of noise videos for the B half (odd clips)."""
    out = {}
    for m in real:
        n_all = len(real[m])
        a, b = np.arange(0, n_all, 2), np.arange(1, n_all, 2)
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        rr = _frechet(real[m][a], real[m][b], m)
        rn = _frechet(real[m][a], np.asarray(noise_b[m])[:n], m)
        gen = {name: _frechet(real[m][a], np.asarray(g[m])[b], m) for name, g in generated.items()}
        out[m] = {
            "real_vs_real": rr,
            "real_vs_noise": rn,
            "generated": gen,
            "n_per_side": n,
            "verdict": verdict(rr, gen, rn),
        }
    return out


def features_of(video_lists: Sequence[Sequence[np.ndarray]], cfg) -> list[dict]:
    """I3D (FVD, [n, d]) and Inception (FID, [n, T, d]) features of every video of every list, scored
    once: `extract_features` scores (real, generated) pairs, so the concatenated videos are split into
    two halves that it takes as the two sides (a copy of the last video pads an odd count)."""
    from metrics.evaluate import extract_features
    from metrics.per_video import PerVideo

    videos = [np.asarray(v) for vs in video_lists for v in vs]
    total = len(videos)
    if total % 2:
        videos.append(videos[-1])
    half = len(videos) // 2
    c = _with(cfg, metrics=["fvd", "fid"])
    pv = PerVideo.from_parts([extract_features(videos[:half], videos[half:], c, progress=False)])
    every = {m: np.concatenate([getattr(pv, m)["real"], getattr(pv, m)["gen"]])[:total] for m in ("fvd", "fid")}
    out, start = [], 0
    for vs in video_lists:
        out.append({m: f[start : start + len(vs)] for m, f in every.items()})
        start += len(vs)
    return out


def table_report(graph, store, parts: Mapping, echo=print) -> dict:
    """The sanity report of one table run on a profile with a foundation: per test set, FVD / FID of
    real half A vs real half B, vs every row's generations and the untrained network's, and vs noise;
    each detector's mAP on the real test frames and on noise; the foundation's own numbers.

    The rows' features are those their evaluate stages saved (per_video.npz, the same I3D and
    Inception features their table cells come from); only the untrained network's videos and the
    noise videos are scored here."""
    from data.registry import build_dataset
    from data.video_io import read_video
    from metrics.per_video import PER_VIDEO_FILE, PerVideo

    plans = [p for p in graph.first_rows() if p.evaluate and all(store.result(h) for h in p.evaluate.values())]
    by_testset: dict[str, list] = {}
    for p in plans:
        by_testset.setdefault(p.testset, []).append(p)
    report = {
        "profile": graph.profile,
        "table": graph.table.name,
        "note": (
            f"Table {graph.table.name}: every row's generated test videos, the untrained network's "
            "(the base model before pretraining) and uniform noise, against the real test clips."
        ),
        "foundation": foundation_summary(parts),
        "testsets": {},
    }
    for ts_hash, rows in by_testset.items():
        ts = store.result(ts_hash)
        cfg = graph.stages[rows[0].generate].run_cfg
        dataset = _dataset_name(cfg["data"])
        names = list(ts["clips"])
        metrics_cfg = OmegaConf.create(cfg["metrics"])
        real, generated = None, {}
        for p in rows:
            pv = PerVideo.load(store.dir(next(iter(p.evaluate.values()))) / PER_VIDEO_FILE)
            if pv.names != names or not (pv.fvd and pv.fid):
                echo(
                    f"sanity: row {p.label}: its evaluation has no per-video FVD / FID features of the test clips; left out"
                )
                continue
            real = real or {m: getattr(pv, m)["real"] for m in ("fvd", "fid")}
            generated[p.label] = {m: getattr(pv, m)["gen"] for m in ("fvd", "fid")}
        if real is None:
            echo(f"sanity: {dataset}: no row has per-video features; no FVD / FID comparison")
            continue
        b_names = names[1::2]
        noise = noise_videos([read_video(Path(ts["frames"]) / n) for n in b_names])
        untrained = []
        if "base_model" in parts:
            frames = _untrained_generations(
                cfg,
                untrained_model(parts, echo),
                store.dir(ts_hash),
                store.root / ".sanity" / f"untrained-{parts['base_model'].hash}-{ts_hash}",
                echo,
            )
            untrained = [read_video(frames / n) for n in b_names]
        echo(f"sanity: FVD / FID of the untrained network's and noise videos ({dataset}, {len(b_names)} clips)")
        noise_f, untrained_f = features_of([noise, untrained], metrics_cfg)
        if untrained:
            generated["untrained network"] = _at_b(untrained_f, len(names))
        section = {"dataset": dataset, "frechet": frechet_from_features(real, generated, noise_f)}
        clips = [c for _, c in zip(names, build_dataset(OmegaConf.create(cfg["data"]), "test"))]
        dets = {k: dict(v) for k, v in (cfg["benchmark"]["eval"].get("detectors") or {}).items()}
        echo(f"sanity: detectors on the real and noise test frames ({dataset})")
        section["detectors"] = detector_sanity(clips, dets, metrics_cfg) if dets else {}
        section["checks"] = finetune_checks(section["frechet"])
        report["testsets"][dataset] = section
    return report


def _dataset_name(data: Mapping) -> str:
    """`mini_nuscenes` for the synthetic nuScenes world, else the data config's name."""
    world = data.get("world")
    return f"mini_{world}" if data.get("name") == "synthetic" and world and world != "default" else str(data["name"])


def finetune_checks(frechet: Mapping) -> list[str]:
    """The issue's expectation "SVD fine-tuned is at least as close to the target world as SVD", per
    metric, where the table has both rows (Table I's svd / svd_finetuned names)."""
    out = []
    for m, d in frechet.items():
        gen = d["generated"]
        base = next((k for k in gen if k.endswith("_svd") or k == "svd"), None)
        tuned = next((k for k in gen if k.endswith("svd_finetuned")), None)
        if base and tuned:
            ok = gen[tuned] <= gen[base]
            out.append(
                f"{m.upper()}: {tuned} {gen[tuned]:.4g} {'<=' if ok else '>'} {base} {gen[base]:.4g}: "
                f"fine-tuning {'moved the model towards' if ok else 'did NOT move the model towards'} the target world"
            )
    return out


def write_table_report(graph, store, parts: Mapping, out_dir: str | Path, echo=print) -> dict[str, Path]:
    report = table_report(graph, store, parts, echo)
    if not report["testsets"]:
        echo(f"sanity: table {graph.table.name} has no generated videos yet; no report")
        return {}
    return write_report(report, out_dir, section=f"table {graph.table.name}")


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
