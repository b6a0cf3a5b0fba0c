"""Benchmark of the metrics (a script, not a timed test).

    python -m benchmark.perf.metrics                          # smoke weights, CPU or GPU, small videos
    python -m benchmark.perf.metrics --config paper --set fvd.weights=... --videos 8 --frames 25 --size 320x512

1. The Frechet distance at d=2048 with N=5000 samples per side (the FID case): the Gaussian
   statistics and the distance itself timed apart (best of `--repeat`).
2. Frames per second of each metric (FVD, FID, detection) on synthetic traffic videos, through
   `metrics.evaluate.evaluate`, so it includes resizing, batching and the model.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from data.cli import command


def bench_frechet(d: int = 2048, n: int = 5000, repeat: int = 3, seed: int = 0) -> dict:
    from metrics.frechet import FrechetBiasWarning, frechet_distance_from_stats, gaussian_stats

    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    a = rng.standard_normal((n, d)) @ mix
    b = rng.standard_normal((n, d)) @ mix * 1.1 + 0.05
    t_stats, t_dist = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        s1, s2 = gaussian_stats(a), gaussian_stats(b)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FrechetBiasWarning)
            value = frechet_distance_from_stats(*s1, *s2).value
        t2 = time.perf_counter()
        t_stats.append(t1 - t0)
        t_dist.append(t2 - t1)
    return {"d": d, "n": n, "value": value, "stats_s": min(t_stats), "distance_s": min(t_dist)}


def bench_metrics(cfg, videos: int, frames: int, size: tuple[int, int], metrics) -> dict:
    from data.synthetic import synthetic_clip
    from metrics.evaluate import evaluate

    real = [synthetic_clip(i, frames, *size).frames for i in range(videos)]
    gen = [synthetic_clip(i + 10_000, frames, *size).frames for i in range(videos)]
    out = {}
    for m in metrics:
        cfg.metrics = [m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(real, gen, cfg, progress=False)
        out[m] = res["timing"][m] | {"device": res["device"]}
    return out


@command
def main(argv=None) -> int:
    from metrics.evaluate import load_config

    p = argparse.ArgumentParser(prog="python -m benchmark.perf.metrics", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="smoke", help="metrics profile (default smoke: tiny random weights)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--metrics", default="fvd,fid,det")
    p.add_argument("--videos", type=int, default=4, help="videos per side")
    p.add_argument("--frames", type=int, default=8, help="frames per video (paper: 25)")
    p.add_argument("--size", default="320x512", help="HxW of the synthetic videos (paper: 320x512)")
    p.add_argument("--repeat", type=int, default=3, help="repeats of the Frechet timing (best is kept)")
    p.add_argument("--skip-frechet", action="store_true")
    p.add_argument("--out", help="also write the numbers as JSON")
    args = p.parse_args(argv)

    import torch

    result = {"threads": torch.get_num_threads()}
    if not args.skip_frechet:
        fr = bench_frechet(repeat=args.repeat)
        result["frechet"] = fr
        print(
            f"Frechet distance d={fr['d']} N={fr['n']} (CPU, {result['threads']} threads): "
            f"stats {fr['stats_s']:.3f} s, distance {fr['distance_s']:.3f} s"
        )
    h, w = (int(v) for v in args.size.lower().split("x"))
    cfg = load_config(args.config, args.set)
    per = bench_metrics(cfg, args.videos, args.frames, (h, w), [m for m in args.metrics.split(",") if m])
    result["metrics"] = per
    print(
        f"{'metric':8s} {'device':8s} {'frames/s':>10s} {'seconds':>9s}   ({args.videos}+{args.videos} videos x "
        f"{args.frames} frames at {h}x{w}, profile {cfg.name})"
    )
    for m, t in per.items():
        print(f"{m:8s} {t['device']:8s} {t['frames_per_s']:10.1f} {t['seconds']:9.2f}")
    if args.out:
        from metrics.evaluate import write_json

        write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
