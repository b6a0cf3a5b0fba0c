"""Run a table's rehearsal (profile=rehearsal) and write its per-stage record.

    python -m benchmark.perf.rehearsal [table=III] [rows=svd_finetuned,hybrid] [store=runs-rehearsal]
        [results=results] [--out-dir results/perf] [key=value ...]

The table runs through `benchmark.run_table.run_table` with the real runner, exactly as
`python -m benchmark.run table=III profile=rehearsal` does; before it the stand-in networks are
written (benchmark/rehearsal.py, timed as their own entry). Written to
`<out-dir>/<device>-rehearsal.json` and `.md`, also when a stage fails or the run is interrupted
(`timeout --signal=INT`): per stage its wall time, peak memory (CUDA max allocated / reserved on a
GPU, the process's peak RSS on the CPU) and whether it finished; per train stage its optimizer steps,
each checkpoint's size and save time and the resume it started from (load time); per generate stage
the seconds per video; the render's time; and whether every stage finished. Exit status 0 when every
stage finished and the table was rendered, 1 otherwise (130 when interrupted).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from benchmark.perf.harness import device_slug
from benchmark.perf.step import device_name, versions
from benchmark.stage_meter import StageMeter
from data.atomic import atomic_write_json, atomic_write_text
from data.cli import UserError as UsageError
from data.cli import command

log = logging.getLogger("benchmark.perf.rehearsal")  # not __name__: run as __main__ by python -m

OPTIONS = {"table": "III", "rows": "svd_finetuned,hybrid", "store": "runs-rehearsal", "results": "results"}


def parse(argv: list[str]) -> tuple[dict, str, list[str]]:
    opts, out_dir, overrides = dict(OPTIONS), "results/perf", []
    it = iter(argv)
    for a in it:
        if a == "--out-dir":
            out_dir = next(it, None) or ""
            if not out_dir:
                raise UsageError("--out-dir needs a folder")
        elif a.startswith("--out-dir="):
            out_dir = a.split("=", 1)[1]
        elif a in ("-h", "--help"):
            raise UsageError(__doc__.strip().splitlines()[2].strip())
        elif "=" in a and a.split("=", 1)[0] in OPTIONS:
            k, v = a.split("=", 1)
            opts[k] = v
        elif a.split("=", 1)[0] == "profile":
            raise UsageError("profile=: the rehearsal is profile=rehearsal (set by this command)")
        elif "=" in a:
            overrides.append(a)
        else:
            raise UsageError(f"{a}: unknown argument (key=value overrides, table=, rows=, store=, results=, --out-dir)")
    return opts, out_dir, overrides


def stage_details(rec: dict, store) -> dict:
    """What the stage's folder says beyond the meter: train steps and checkpoint I/O, generation speed."""
    folder = store.dir(rec["hash"])
    out = {}
    if rec["kind"] == "train":
        summary = folder / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            io = s.get("checkpoint_io") or {}
            out.update(
                steps=s.get("global_step"),
                trainable_params=s.get("trainable_params"),
                checkpoints_saved=[
                    dict(step=c["step"], gib=c["bytes"] / 2**30, seconds=c["seconds"]) for c in io.get("saved", [])
                ],
                resumed_from=[dict(folder=c["folder"], seconds=c["seconds"]) for c in io.get("loaded", [])],
            )
    elif store.is_done(rec["hash"]):
        res = store.result(rec["hash"])
        if rec["kind"] == "generate":
            out.update(seconds_per_video=res.get("seconds_per_video"), num_videos=res.get("num_videos"))
        elif rec["kind"] == "evaluate":
            m = res.get("metrics", {}) if isinstance(res, dict) else {}
            out.update(metrics={k: m[k] for k in ("fvd", "fid", "det") if k in m})
    return out


def run(opts: dict, overrides: list[str], out_dir: Path) -> tuple[dict, int]:
    import torch

    from ablations.registry import load_table
    from benchmark import rehearsal
    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table
    from benchmark.stages import expand
    from benchmark.store import Store
    from benchmark.trainer_runner import TrainerRunner

    rows = opts["rows"].split(",") if opts["rows"] else None
    resolver = HydraResolver("rehearsal", overrides)
    spec = load_table(opts["table"]).select(rows)
    store = Store(opts["store"])
    report = dict(
        what="REHEARSAL of the paper profile: random stand-in networks in the official formats, synthetic clips, "
        "few optimizer steps and 2 test videos (docs/perf.md, 'The rehearsal'); times and memory at full size, "
        "no meaningful metric values",
        device=device_name(),
        versions=versions(),
        table=spec.name,
        rows=[r.name for r in spec.rows],
        overrides=overrides,
        store=str(store.root),
        stand_ins={},
        stages=[],
        cached=[],
    )
    meter = StageMeter(log.info)
    rc, t_all = 1, time.perf_counter()
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        report["stand_ins"] = dict(written_now_s=rehearsal.ensure(resolver.base, log.info), **_paths(resolver.base))
        report["stand_ins"]["wall_s"] = time.perf_counter() - t0
        # stages are hashed by their inputs' content (benchmark/identity.py): the graph once the stand-ins exist
        report["cached"] = [h for h in expand(spec, resolver).stages if store.is_done(h)]
        if torch.cuda.is_available():
            report["stand_ins"]["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        t_table = time.perf_counter()
        run_table(spec, resolver, TrainerRunner(), store=store, results=opts["results"], meter=meter)
        report["render_s"] = time.perf_counter() - t_table - sum(r.get("wall_s", 0) for r in meter.records)
        rc = 0
    except KeyboardInterrupt:
        report["error"] = "interrupted (time limit or Ctrl-C)"
        rc = 130
    except Exception as e:  # the record is written whatever failed; the traceback goes to the log
        log.exception("the rehearsal stopped")
        report["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500] if str(e).strip() else ''}"
    report["wall_s"] = time.perf_counter() - t_all
    graph = expand(spec, resolver)  # after the stand-ins were written (or failed to be): what the run hashed
    for rec in meter.records:
        report["stages"].append({**rec, **stage_details(rec, store)})
    ran = {r["hash"] for r in meter.records}
    report["not_run"] = [
        dict(kind=s.kind, hash=h, rows=list(s.rows))
        for h, s in graph.stages.items()
        if h not in ran and not store.is_done(h)
    ]
    report["every_stage_done"] = all(store.is_done(h) for h in graph.stages)
    if not report["every_stage_done"] and rc == 0:
        rc = 1
    stem = out_dir / f"{device_slug(device_name())}-rehearsal"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stem.with_suffix(".json"), report, indent=1, default=str)
    atomic_write_text(stem.with_suffix(".md"), markdown(report))
    log.info("wrote %s.json / .md", stem)
    return report, rc


def _paths(cfg) -> dict:
    from benchmark import rehearsal

    s = rehearsal.settings(cfg)
    return dict(networks=s["networks"], dir=str(s["dir"]))


def _gib(rec: dict) -> str:
    if "peak_allocated_gib" in rec:
        return f"{rec['peak_allocated_gib']:.1f} / {rec['peak_reserved_gib']:.1f}"
    if "process_peak_rss_gib" in rec:
        return f"RSS {rec['process_peak_rss_gib']:.1f}"
    return "-"


def _what(rec: dict) -> str:
    p = rec.get("params", {})
    bits = [f"{k}={v}" for k, v in p.items() if k in ("epoch", "objective", "detector", "dataset")]
    if rec.get("steps") is not None:
        bits.append(f"{rec['steps']} steps")
    for c in rec.get("checkpoints_saved", []):
        bits.append(f"checkpoint step {c['step']}: {c['gib']:.2f} GiB in {c['seconds']:.1f} s")
    for c in rec.get("resumed_from", []):
        bits.append(
            f"resumed from {Path(c['folder']).parent.parent.name}/{Path(c['folder']).name} in {c['seconds']:.1f} s"
        )
    if rec.get("seconds_per_video") is not None:
        bits.append(f"{rec['seconds_per_video']:.1f} s per video")
    if rec.get("error"):
        bits.append(f"error: {rec['error']}")
    return "; ".join(bits)


def markdown(r: dict) -> str:
    lines = [
        f"# Rehearsal of Table {r['table']} (rows {', '.join(r['rows'])}) on {r['device']}",
        "",
        f"**REHEARSAL**: {r['what']}.",
        "",
        f"torch {r['versions'].get('torch')}, diffusers {r['versions'].get('diffusers')}, transformers "
        f"{r['versions'].get('transformers')}; overrides: `{' '.join(r['overrides']) or '(none)'}`; store `{r['store']}`.",
        "",
        f"Every stage done: **{'yes' if r['every_stage_done'] else 'NO'}**"
        + (f"; stopped by: {r['error']}" if r.get("error") else "")
        + f". Total wall time {r['wall_s']:.0f} s.",
        "",
        "| stage | hash | rows | wall s | peak GiB (allocated / reserved) | done | details |",
        "|---|---|---|--:|--:|:-:|---|",
    ]
    si = r.get("stand_ins") or {}
    if si:
        made = ", ".join(f"{k} {v:.0f} s" for k, v in (si.get("written_now_s") or {}).items()) or "all present"
        peak = f"{si['peak_allocated_gib']:.1f}" if "peak_allocated_gib" in si else "-"
        lines.append(
            f"| stand-ins ({si.get('networks')}) | - | - | {si.get('wall_s', 0):.1f} | {peak} | yes | written now: {made} |"
        )
    for s in r["stages"]:
        lines.append(
            f"| {s['kind']} | {s['hash']} | {', '.join(s['rows'])} | {s.get('wall_s', 0):.1f} | {_gib(s)} | "
            f"{'yes' if s['done'] else 'NO'} | {_what(s)} |"
        )
    for s in r.get("not_run", []):
        lines.append(f"| {s['kind']} | {s['hash']} | {', '.join(s['rows'])} | - | - | not run | |")
    if r.get("render_s") is not None:
        lines.append(f"| render (table, figures, report) | - | - | {r['render_s']:.1f} | - | yes | |")
    if r.get("cached"):
        lines += ["", f"Cached before this run (not timed): {len(r['cached'])} stage(s)."]
    return "\n".join(lines) + "\n"


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts, out_dir, overrides = parse(argv)
    _, rc = run(opts, overrides, Path(out_dir))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
