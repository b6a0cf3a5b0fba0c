"""Per-stage wall time and peak GPU memory of the stages a local run executes.

`run_table` wraps each stage it runs here in `StageMeter.stage(stage)`: the CUDA peak statistics are
reset before it, and after it one line is logged (`stage train 1a2b3c: 41.2 s, peak 53.4 GiB
allocated / 56.7 GiB reserved`) and a record kept in `TableRun.stage_perf` (benchmark/perf/rehearsal.py
writes them into results/perf/<device>-rehearsal.json / .md). On the CPU the peak is the process's
peak resident memory so far (it never goes down, so it is an upper bound of the stage's own).
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager

import torch

GIB = 2**30


def _rss_peak_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB  # bytes on macOS, KiB on Linux


class StageMeter:
    def __init__(self, echo=None):
        self.echo = echo
        self.records: list[dict] = []

    @contextmanager
    def stage(self, stage):
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rec = dict(kind=stage.kind, hash=stage.hash, rows=list(stage.rows), params=_plain(stage.params), done=False)
        self.records.append(rec)
        t0 = time.perf_counter()
        try:
            yield rec
            rec["done"] = True
        except BaseException as e:
            rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            raise
        finally:
            if cuda:
                torch.cuda.synchronize()
                rec["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
                rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
                mem = (
                    f"peak {rec['peak_allocated_gib']:.1f} GiB allocated / {rec['peak_reserved_gib']:.1f} GiB reserved"
                )
            else:
                rec["process_peak_rss_gib"] = _rss_peak_gib()
                mem = f"process peak RSS {rec['process_peak_rss_gib']:.1f} GiB"
            rec["wall_s"] = time.perf_counter() - t0
            if self.echo is not None:
                state = "" if rec["done"] else " (did not finish)"
                self.echo(f"stage {stage.kind} {stage.hash}{state}: {rec['wall_s']:.1f} s, {mem}")


def _plain(params: dict) -> dict:
    """The stage's params that are plain values (epoch, objective, detector, ...)."""
    return {k: v for k, v in (params or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
