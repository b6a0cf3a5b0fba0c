"""Bootstrap intervals of a table's cells and paired differences to its baseline row, from the
evaluate stages' per-video files (metrics/per_video.py, metrics/bootstrap.py).

For every row (and seed) and every evaluate column: the percentile interval of the metric over
`benchmark.bootstrap.n_resamples` resamples of the test videos; for a row with a baseline (the
spec's `compare_to` row of its rank_within group, scored on the same test clips) the interval of
the difference row - baseline from the same resamples, and its mark (the interval excludes 0).
All rows use the same resample indices (same N, same `benchmark.bootstrap.seed`), so the baseline's
own interval is the baseline half of every paired run. Per-frame curves get a band from
`per_frame_resamples` resamples.

Results are cached in `<store>/.bootstrap/<key>.json`, the key hashing the evaluate stages and the
settings: rerendering a table does not redo the resampling (minutes on the paper profile).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmark.stages import canonical_json, select
from data.atomic import atomic_write_json
from metrics.bootstrap import bootstrap, paired_bootstrap
from metrics.per_video import PER_VIDEO_FILE, PerVideo, statistic

CACHE = ".bootstrap"
CACHE_VERSION = 1
DEFAULTS = {"n_resamples": 1000, "per_frame_resamples": 200, "confidence": 0.95, "seed": 0}


def settings(cfg: dict) -> dict:
    """benchmark.bootstrap with its defaults, checked."""
    s = {**DEFAULTS, **(select(cfg, "benchmark.bootstrap", {}) or {})}
    from data.cli import InputError

    for k in ("n_resamples", "per_frame_resamples", "seed"):
        if not isinstance(s[k], int) or s[k] < (1 if k == "n_resamples" else 0):
            raise InputError(
                f"benchmark.bootstrap.{k}={s[k]!r}: expected an integer >= {1 if k == 'n_resamples' else 0}"
            )
    if not 0 < float(s["confidence"]) < 1:
        raise InputError(f"benchmark.bootstrap.confidence={s['confidence']!r}: expected a number in (0, 1)")
    return s


class TableIntervals:
    """Bootstrap results of one table's plans, computed on demand and cached in the store."""

    def __init__(self, graph, store, opts: dict):
        self.graph, self.store, self.opts = graph, store, opts
        self._pv: dict[str, PerVideo | None] = {}

    def _per_video(self, h: str) -> PerVideo | None:
        if h not in self._pv:
            path = self.store.dir(h) / PER_VIDEO_FILE
            self._pv[h] = PerVideo.load(path) if self.store.is_done(h) and path.is_file() else None
        return self._pv[h]

    def _stat(self, h: str, keys, per_frame: bool = False):
        pv = self._per_video(h)
        det_cfg = select(self.graph.stages[h].run_cfg, "metrics.det", None)
        return statistic(pv, det_cfg, per_frame=per_frame, keys=keys)

    def _cached(self, payload: dict, compute) -> dict:
        key = hashlib.sha256(canonical_json({"v": CACHE_VERSION, **payload}).encode()).hexdigest()[:16]
        path = self.store.root / CACHE / f"{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        out = compute()
        atomic_write_json(path, out)
        return out

    def cell(self, h: str, base: str | None, keys: list[str]) -> dict:
        """{metric key: {"interval": {...}, "diff": {...} or None}} of evaluate stage h (and its paired
        difference to evaluate stage `base`, which must score the same clips)."""
        o = self.opts
        pv, pb = self._per_video(h), self._per_video(base) if base else None
        if pv is None:
            return {}
        if pb is not None and pb.names != pv.names:
            pb = None  # other test clips: no pairing
        payload = {
            "a": h,
            "b": base if pb is not None else None,
            "keys": sorted(keys),
            **{k: o[k] for k in ("n_resamples", "confidence", "seed")},
        }

        def compute():
            kw = {"n_resamples": o["n_resamples"], "seed": o["seed"], "confidence": o["confidence"]}
            if pb is None:
                res = bootstrap(self._stat(h, keys), pv.n, **kw)
                return {k: {"interval": iv.to_json(), "diff": None} for k, iv in res.items()}
            res = paired_bootstrap(self._stat(h, keys), self._stat(base, keys), pv.n, **kw)
            return {k: {"interval": r.a.to_json(), "diff": r.diff.to_json()} for k, r in res.items()}

        return self._cached(payload, compute)

    def per_frame(self, h: str) -> dict | None:
        """{"mAP_low": [...], "mAP_high": [...], "mIoU_low", "mIoU_high"} of evaluate stage h, or None."""
        o = self.opts
        pv = self._per_video(h)
        if pv is None or pv.detections is None or not o["per_frame_resamples"]:
            return None
        payload = {
            "a": h,
            "per_frame": True,
            "n_resamples": o["per_frame_resamples"],
            **{k: o[k] for k in ("confidence", "seed")},
        }

        def compute():
            res = bootstrap(
                self._stat(h, ["det.per_frame"], per_frame=True),
                pv.n,
                n_resamples=o["per_frame_resamples"],
                seed=o["seed"],
                confidence=o["confidence"],
            )
            out = {}
            for m in ("mAP", "mIoU"):
                ivs = [
                    res[k]
                    for k in sorted(
                        (k for k in res if k.startswith(f"det.per_frame.{m}.")), key=lambda k: int(k.rsplit(".", 1)[1])
                    )
                ]
                out[f"{m}_low"] = [iv.low for iv in ivs]
                out[f"{m}_high"] = [iv.high for iv in ivs]
            return out

        return self._cached(payload, compute)


def table_intervals(graph, store) -> tuple[dict, dict, dict]:
    """(cells, bands, opts): cells[(row, seed)][column id] = {"interval", "diff", "baseline"} in the
    column's units; bands[(row, seed)][detector] = per-frame band; opts = the bootstrap settings."""
    spec = graph.table
    opts = settings(graph.render.run_cfg)
    ti = TableIntervals(graph, store, opts)
    by_name = {(p.row.name, p.seed): p for p in graph.rows}
    cells, bands = {}, {}
    for plan in graph.rows:
        base_name = spec.compare_row(plan.row)
        base = by_name.get((base_name, plan.seed)) if base_name else None
        if base is not None and base.testset != plan.testset:
            base = None
        out = {}
        columns = [c for c in spec.columns if c.source == "evaluate"]
        for det in dict.fromkeys(spec.detector_of(plan.row, c) for c in columns):
            h = plan.evaluate.get(det)
            if h is None:
                continue
            cols = [c for c in columns if spec.detector_of(plan.row, c) == det]
            hb = base.evaluate.get(det) if base is not None else None
            res = ti.cell(h, hb, [c.key for c in cols])
            for c in cols:
                r = res.get(c.key)
                if r:
                    out[c.id] = {
                        "interval": _scaled(r["interval"], c.scale),
                        "diff": _scaled(r["diff"], c.scale),
                        "baseline": base_name if r["diff"] else None,
                    }
            band = ti.per_frame(h) if det == spec.detector or len(plan.evaluate) == 1 else None
            if band:
                bands.setdefault((plan.row.name, plan.seed), {})[det] = band
        cells[(plan.row.name, plan.seed)] = out
    return cells, bands, opts


def _scaled(iv: dict | None, scale: float) -> dict | None:
    if iv is None or scale == 1:
        return iv
    return {**iv, **{k: (None if iv[k] is None else iv[k] * scale) for k in ("value", "low", "high", "half_width")}}


def excludes_zero(diff: dict | None) -> bool:
    return bool(diff) and diff["low"] is not None and (diff["low"] > 0 or diff["high"] < 0)


def cache_dir(store) -> Path:
    return Path(store.root) / CACHE
