"""Seeded percentile bootstrap over test videos: 95% intervals of FVD, FID, mAP and mIoU, and of the
difference between two rows that score the same test clips (paired: the same resampled videos).

A resample draws N of the N test videos with replacement (`resample_indices`), then recomputes the
metric from the per-video quantities the evaluate stage keeps (metrics/per_video.py):
- FVD: the Frechet distance (metrics/frechet.py) of the resampled videos' I3D features, real and
  generated side taking the same videos (a test clip and its generated video stay together);
- FID: the same over the per-frame Inception features of the resampled videos (all their frames);
- mAP / mIoU: the detection accumulation (metrics/detection.py) rerun over the resampled videos,
  in resample order (a video drawn twice counts twice, as two videos).
The interval is the percentile interval: the (1-c)/2 and (1+c)/2 quantiles (numpy's default
linear interpolation) of the statistic over the resamples, exactly what
`scipy.stats.bootstrap(..., method='percentile')` computes from the same indices (tests). A resample
where the statistic is undefined (mAP without a reference box) is left out and counted.

Paired difference (row minus baseline): the same indices for both rows, so per-clip difficulty
cancels; `Interval.excludes_zero` is the mark of the tables (docs/benchmark.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], Mapping[str, float | None]]  # video indices -> {metric key: value}


@dataclass(frozen=True)
class Interval:
    value: float | None  # the statistic on all N videos (the table's number)
    low: float | None
    high: float | None
    confidence: float
    n_resamples: int  # resamples drawn
    n_defined: int  # resamples where the statistic was defined (used for the quantiles)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2.0

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or below 0 (the table's significance mark)."""
        return self.low is not None and (self.low > 0.0 or self.high < 0.0)

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "half_width": self.half_width,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "n_defined": self.n_defined,
        }


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] video indices drawn with replacement: `Generator.integers(0, n, (B, n))` of
    `np.random.default_rng(seed)`, the very draw of scipy.stats.bootstrap with that generator."""
    if n < 1:
        raise ValueError("bootstrap: no video to resample")
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples={n_resamples}; at least 1 is needed")
    return np.random.default_rng(seed).integers(0, n, (int(n_resamples), int(n)))


def percentile_interval(distribution, confidence: float = 0.95) -> tuple[float | None, float | None, int]:
    """(low, high, number of finite values) of the percentile interval of a bootstrap distribution."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: must lie in (0, 1)")
    d = np.asarray([np.nan if v is None else v for v in distribution], dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None, None, 0
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    return float(low), float(high), len(d)


def _distributions(statistics: Mapping[str, Statistic], indices: np.ndarray) -> dict[str, dict[str, list]]:
    """{statistic name: {metric key: [value per resample]}}: every statistic sees the same indices."""
    out: dict[str, dict[str, list]] = {name: {} for name in statistics}
    for idx in indices:
        for name, stat in statistics.items():
            for key, v in stat(idx).items():
                out[name].setdefault(key, []).append(v)
    return out


def bootstrap(
    statistic: Statistic, n: int, *, n_resamples: int, seed: int, confidence: float = 0.95
) -> dict[str, Interval]:
    """Percentile intervals of every metric `statistic` returns, resampling the n videos."""
    full = dict(statistic(np.arange(n)))
    dist = _distributions({"a": statistic}, resample_indices(n, n_resamples, seed))["a"]
    return {k: _interval(full.get(k), dist.get(k, []), confidence, n_resamples) for k in full}


@dataclass(frozen=True)
class Paired:
    a: Interval  # the row
    b: Interval  # the baseline row
    diff: Interval  # a - b, from the same resamples


def paired_bootstrap(
    stat_a: Statistic, stat_b: Statistic, n: int, *, n_resamples: int, seed: int, confidence: float = 0.95
) -> dict[str, Paired]:
    """Intervals of two rows scored on the same n test clips (index i is the same clip in both) and of
    their difference a - b, every resample applying the same video indices to both rows."""
    full_a, full_b = dict(stat_a(np.arange(n))), dict(stat_b(np.arange(n)))
    dist = _distributions({"a": stat_a, "b": stat_b}, resample_indices(n, n_resamples, seed))
    out = {}
    for k, fa in full_a.items():
        if k not in full_b:
            continue
        da, db = dist["a"].get(k, []), dist["b"].get(k, [])
        dd = [None if x is None or y is None else x - y for x, y in zip(da, db)]
        fb = full_b[k]
        out[k] = Paired(
            _interval(fa, da, confidence, n_resamples),
            _interval(fb, db, confidence, n_resamples),
            _interval(None if fa is None or fb is None else fa - fb, dd, confidence, n_resamples),
        )
    return out


def _interval(value, distribution, confidence: float, n_resamples: int) -> Interval:
    low, high, n_def = percentile_interval(distribution, confidence)
    return Interval(None if value is None else float(value), low, high, confidence, int(n_resamples), n_def)
