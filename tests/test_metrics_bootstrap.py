"""Bootstrap intervals over test videos (metrics/bootstrap.py) and the per-video quantities they
resample (metrics/per_video.py): equal to scipy.stats.bootstrap on the same values and generator,
paired differences on constructed cases, the mark, and the per-video statistic = metrics.evaluate."""

import numpy as np
import pytest
from scipy import stats

from metrics.bootstrap import (
    Interval,
    bootstrap,
    paired_bootstrap,
    percentile_interval,
    resample_indices,
)
from metrics.detectors.base import Detections
from metrics.frechet import frechet_distance
from metrics.per_video import PerVideo, statistic


def test_interval_equals_scipy_percentile_bootstrap_on_a_mean():
    x = np.random.default_rng(7).gamma(2.0, 3.0, size=40)  # per-video values, skewed
    ours = bootstrap(lambda idx: {"m": float(x[idx].mean())}, len(x), n_resamples=500, seed=11)["m"]
    ref = stats.bootstrap(
        (x,), np.mean, n_resamples=500, method="percentile", confidence_level=0.95, rng=np.random.default_rng(11)
    )
    # the same draws (Generator.integers(0, n, (B, n))) and the same quantile rule: equal to rounding
    assert ours.low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, rel=1e-12)
    assert ours.value == pytest.approx(x.mean()) and ours.n_defined == 500
    # another seed gives another interval (the seed is used)
    other = bootstrap(lambda idx: {"m": float(x[idx].mean())}, len(x), n_resamples=500, seed=12)["m"]
    assert (other.low, other.high) != (ours.low, ours.high)


def test_frechet_interval_equals_scipy_on_the_same_video_features():
    """FVD's interval: scipy resamples video indices (paired real/generated) with the same generator."""
    rng = np.random.default_rng(3)
    real = rng.normal(size=(12, 4))
    gen = real + rng.normal(0.5, 1.0, size=(12, 4))
    fd = lambda i: frechet_distance(real[i], gen[i]).value
    ours = bootstrap(lambda idx: {"fvd": fd(idx)}, 12, n_resamples=60, seed=5)["fvd"]
    ref = stats.bootstrap(
        (np.arange(12),),
        lambda i: fd(i.astype(int)),
        vectorized=False,
        n_resamples=60,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    assert (ours.low, ours.high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12
    )


def test_paired_difference_on_a_constructed_case():
    """Clips differ a lot in difficulty; row a beats row b by 0.5 on every clip (+ small noise).
    Unpaired, the two intervals overlap; paired, the difference's interval excludes 0 and holds 0.5."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, size=50)
    b = difficulty
    a = difficulty + 0.5 + rng.normal(0, 0.1, size=50)
    res = paired_bootstrap(
        lambda i: {"m": float(a[i].mean())}, lambda i: {"m": float(b[i].mean())}, 50, n_resamples=400, seed=1
    )["m"]
    assert res.a.low < res.b.high and res.b.low < res.a.high  # unpaired: they overlap
    assert res.diff.excludes_zero and res.diff.low < 0.5 < res.diff.high
    assert res.diff.value == pytest.approx(float((a - b).mean()))
    # the paired interval is scipy's paired bootstrap of mean(a) - mean(b)
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        n_resamples=400,
        method="percentile",
        rng=np.random.default_rng(1),
    )
    assert (res.diff.low, res.diff.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    # identical rows: the difference is exactly 0 in every resample, never marked
    same = paired_bootstrap(
        lambda i: {"m": float(b[i].mean())}, lambda i: {"m": float(b[i].mean())}, 50, n_resamples=50, seed=1
    )["m"]
    assert same.diff.low == same.diff.high == 0.0 and not same.diff.excludes_zero


def test_mark_logic_and_undefined_resamples():
    iv = lambda lo, hi: Interval(0.0, lo, hi, 0.95, 10, 10)
    assert iv(0.1, 2.0).excludes_zero and iv(-2.0, -0.1).excludes_zero
    assert not iv(-1.0, 1.0).excludes_zero and not iv(0.0, 1.0).excludes_zero and not iv(-1.0, 0.0).excludes_zero
    assert not Interval(None, None, None, 0.95, 10, 0).excludes_zero
    assert iv(1.0, 3.0).half_width == 1.0
    lo, hi, n = percentile_interval([1.0, None, 3.0, float("nan")], 0.5)
    assert n == 2 and (lo, hi) == (1.5, 2.5)
    with pytest.raises(ValueError):
        resample_indices(0, 10, 0)


def _det(boxes, scores=None, label=2):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections(boxes, np.ones(len(boxes)) * 0.9 if scores is None else scores, np.full(len(boxes), label))


def _det_cfg():
    from metrics.evaluate import load_config

    return load_config("smoke").det


def test_paired_detection_difference_known_sign():
    """Row a predicts the reference boxes exactly (mAP 100); row b shifts them: the paired difference
    of mAP is positive in every resample, so its interval excludes 0."""
    rng = np.random.default_rng(2)
    videos_a, videos_b = [], []
    for _ in range(8):
        refs = [_det([[x, 10, x + 30, 40]]) for x in rng.uniform(0, 50, size=3)]
        shifted = [_det(d.boxes + np.float32([6, 0, 6, 0])) for d in refs]
        videos_a.append((refs, refs, (64, 96)))
        videos_b.append((refs, shifted, (64, 96)))
    cfg = _det_cfg()
    sa = statistic(PerVideo([f"c{i}" for i in range(8)], detections=videos_a), cfg)
    sb = statistic(PerVideo([f"c{i}" for i in range(8)], detections=videos_b), cfg)
    res = paired_bootstrap(sa, sb, 8, n_resamples=20, seed=0)
    assert res["det.mAP"].a.value == pytest.approx(100.0)
    assert res["det.mAP"].diff.excludes_zero and res["det.mAP"].diff.low > 0
    assert res["det.mIoU"].diff.low > 0


def _parts(rng, n, t=3, d=5):
    """extract_features-shaped parts (two shards) with random features and detections."""
    parts = []
    for names in ([f"c{i}" for i in range(n // 2)], [f"c{i}" for i in range(n // 2, n)]):
        k = len(names)
        dets = []
        for _ in names:
            refs = [
                _det(rng.uniform(0, 30, (2, 2)).repeat(2, 1) + [0, 0, 20, 20], rng.uniform(0.5, 1, 2)) for _ in range(t)
            ]
            preds = [_det(r.boxes + rng.normal(0, 3, r.boxes.shape), rng.uniform(0, 1, len(r))) for r in refs]
            dets.append((refs, preds, (64, 96)))
        parts.append(
            {
                "names": names,
                "metrics": ["fvd", "fid", "det"],
                "n_videos": k,
                "num_frames": t,
                "video_size": [64, 96],
                "device": "cpu",
                "seconds": {"fvd": 0, "fid": 0, "det": 0},
                "warnings": [],
                "weights": {"fvd.weights": "w", "fid.weights": "w"},
                "info": {"fvd": {}, "fid": {}, "det": {"detector": "fake"}},
                "features": {
                    "fvd": {s: [rng.normal(size=(k, d)).astype(np.float32)] for s in ("real", "gen")},
                    "fid": {s: [rng.normal(size=(t, d)).astype(np.float32) for _ in names] for s in ("real", "gen")},
                },
                "detections": dets,
            }
        )
    return parts


def test_per_video_statistic_equals_the_evaluation_and_survives_a_file(tmp_path):
    from metrics.evaluate import load_config, merge_features

    cfg = load_config("smoke")
    parts = _parts(np.random.default_rng(4), 6)
    merged = merge_features(parts, cfg)
    pv = PerVideo.from_parts(parts)
    loaded = PerVideo.load(pv.save(tmp_path / "per_video.npz"))
    assert loaded.names == pv.names and loaded.fid["real"].shape == (6, 3, 5)
    for p in (pv, loaded):
        full = statistic(p, cfg.det, per_frame=True)(np.arange(6))
        assert full["fvd.value"] == merged["fvd"]["value"] and full["fid.value"] == merged["fid"]["value"]
        assert full["det.mAP"] == merged["det"]["mAP"] and full["det.mIoU"] == merged["det"]["mIoU"]
        assert [full[f"det.per_frame.mAP.{j}"] for j in range(3)] == merged["det"]["per_frame"]["mAP"]


@pytest.mark.parametrize("miou", ["hungarian_ref", "matched_mean"])
def test_resampled_detection_scores_equal_a_fresh_accumulation(miou):
    """DetectionResampler (per-image COCO matching once, accumulate per resample) gives exactly what
    DetectionAccumulator computes from scratch on the resampled videos, repeats included."""
    from metrics.detection import DetectionAccumulator, DetProtocol
    from metrics.per_video import DetectionResampler

    cfg = _det_cfg()
    cfg.miou = miou
    protocol = DetProtocol.from_cfg(cfg)
    dets = (
        _parts(np.random.default_rng(9), 6, t=3)[0]["detections"]
        + _parts(np.random.default_rng(10), 6, t=3)[1]["detections"]
    )
    fast = DetectionResampler(dets, protocol)
    for idx in ([0, 1, 2, 3, 4, 5], [5, 5, 0, 2, 2, 2], [3, 1, 4, 1, 5, 0]):
        acc = DetectionAccumulator(protocol)
        for i in idx:
            acc.add_video(*dets[i])
        ref = acc.compute()
        got = fast.scores(idx)
        assert (got["mAP"], got["mIoU"]) == (ref["mAP"], ref["mIoU"])
        for j in range(3):
            got = fast.scores(idx, frame=j)
            assert (got["mAP"], got["mIoU"]) == (ref["per_frame"]["mAP"][j], ref["per_frame"]["mIoU"][j])
