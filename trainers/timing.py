"""How generation is timed, shared by the SVD rows (benchmark.generate) and Ctrl-V (trainers.ctrlv)."""

from __future__ import annotations

import statistics


def generation_timing(times: list[float], total: int) -> dict:
    """Seconds spent generating and the MEDIAN seconds per video: robust to the first call's one-time
    set-up and to a busy machine, so rows timed in different runs compare (Table I's efficiency)."""
    return dict(
        seconds=sum(times),
        generated=len(times),
        total=total,
        times=times,
        seconds_per_video=statistics.median(times) if times else None,
    )
