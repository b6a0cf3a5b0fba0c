"""python -m benchmark.status table=III [profile=...] [rows=...] [store=runs] [key=value ...] [--logs] [--verify]
   python -m benchmark.status --verify [store=runs]

Where each stage of a table stands: done / running (job id) / queued (job id, SLURM's reason) /
failed (job id, state, log path; or a local attempt that raised: its FAILED record's exception) /
pending (never submitted, interrupted by Ctrl-C, or a local attempt that did not finish).
Give it the same table, profile, rows and overrides as the `benchmark.run` it looks at: they decide
the stage hashes. Reads the store and asks squeue / sacct about recorded jobs; changes nothing.
A failed stage is submitted again by the next `benchmark.run`; it is never counted done.

  --logs    print the last lines of each failed stage's log
  --verify  check every finished stage (of the table, or without table= of the whole store) against
            its manifest (benchmark/manifest.py): a file missing, added or changed since the stage
            finished marks it damaged (every file hashed in full), and with table= so does every
            stage made from a damaged one: the next benchmark.run recomputes them all. Exit 1 if
            any is damaged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ablations.registry import list_tables, load_table
from benchmark import provenance
from benchmark.run import UsageError, parse_args
from benchmark.stages import HASH_LEN, StageGraph
from benchmark.store import Store
from data.cli import command
from slurm.records import QueueUnavailable, last_submission, query_jobs, tail

FLAGS = {"--logs", "--verify", "-h", "--help"}


@dataclass
class StageStatus:
    hash: str
    kind: str
    what: str
    status: str  # done | damaged | running | queued | failed | pending | unknown
    job_id: str | None = None
    detail: str = ""
    log: str | None = None


def stage_statuses(graph: StageGraph, store: Store) -> list[StageStatus]:
    subs = {s.hash: last_submission(store.dir(s.hash)) for s in graph.order()}
    slurm_ids = [
        sub["job_id"] for h, sub in subs.items() if sub and sub.get("executor") == "slurm" and not store.is_done(h)
    ]
    try:
        states, queue_error = query_jobs(slurm_ids), None
    except QueueUnavailable as e:
        states, queue_error = {}, str(e)
    out = []
    for s in graph.order():
        sub = subs[s.hash] or {}
        st = StageStatus(s.hash, s.kind, s.describe(), "pending", sub.get("job_id"), log=sub.get("stderr"))
        if store.is_done(s.hash):
            st.status = "done"
        elif sub.get("executor") == "slurm":
            _classify_slurm(st, states.get(sub["job_id"]), queue_error)
        elif sub:
            st.status, st.detail = "failed", f"its {sub.get('executor')} run ended without a result"
        else:
            failure = store.failure(s.hash)  # written by the runner when a local attempt raised
            started = _last_attempt(store, s.hash)
            if failure and failure.get("interrupted"):
                st.detail = f"interrupted (Ctrl-C) at {failure.get('time')}; the next benchmark.run resumes it"
            elif failure:
                st.status = "failed"
                st.detail = f"{failure.get('error')} (at {failure.get('time')}); the next benchmark.run retries it"
            elif started:
                st.detail = f"a local attempt started {started} did not finish (still running, or killed)"
        _add_shard_progress(st, s, store)
        out.append(st)
    for h, why in provenance.flag_stages(graph, store).items():  # made by other code
        st = next(x for x in out if x.hash == h)
        st.detail = "; ".join(x for x in (st.detail, f"other code made it: {'; '.join(why)}") if x)
    _explain_dependencies(out, graph)
    return out


def _damage_text(damage: list[str] | None) -> str:
    if damage is None:
        return "no manifest (finished before manifests existed): not checkable"
    return "; ".join(damage[:3]) + (f"; ... {len(damage) - 3} more" if len(damage) > 3 else "")


def mark_damaged(statuses: list[StageStatus], store: Store, graph: StageGraph | None = None) -> bool:
    """--verify: each done stage checked against its manifest, every file hashed in full; a damaged
    one becomes `damaged` with the files named, and so does (with `graph`) every done stage made
    from a damaged one: the next benchmark.run recomputes them together. True if any is damaged."""
    found = False
    bad: set[str] = set()
    for st in statuses:  # in dependency order (stage_statuses follows graph.order())
        if st.status != "done":
            continue
        damage = store.verify(st.hash)
        inputs = [d for d in graph.stages[st.hash].deps if d in bad] if graph is not None else []
        if damage:
            st.status, st.detail, found = "damaged", _damage_text(damage), True
            bad.add(st.hash)
        elif inputs:
            st.status, found = "damaged", True
            st.detail = f"made from damaged stage {', '.join(inputs)}: recomputed with it"
            bad.add(st.hash)
        else:  # keeps what stage_statuses said (e.g. made by other code)
            st.detail = "; ".join(x for x in (_damage_text(None) if damage is None else "verified", st.detail) if x)
    return found


def verify_store(store: Store) -> tuple[list[str], bool]:
    """--verify without a table: every finished stage folder of the store, every file hashed in full;
    a stage made (its stage.json's deps, transitively) from a damaged one is damaged too.
    (lines, any damaged)."""
    done = sorted(p.parent.name for p in store.root.glob("*/DONE"))
    found = {h: store.verify(h) for h in done}
    info = {h: store.stage_info(h) for h in done}
    bad = {h for h, damage in found.items() if damage}
    made_from: dict[str, list[str]] = {}
    grew = True
    while grew:  # downstream of a damaged stage, however deep
        grew = False
        for h in done:
            inputs = [d for d in info[h].get("deps") or [] if d in bad]
            if inputs and h not in bad:
                bad.add(h)
                made_from[h], grew = inputs, True
    lines = []
    for h in done:
        kind = info[h].get("kind", "?")
        if found[h]:
            lines.append(f"  damaged  {kind:<9} {h}  {_damage_text(found[h])}")
        elif h in made_from:
            lines.append(
                f"  damaged  {kind:<9} {h}  made from damaged stage {', '.join(made_from[h])}: recomputed with it"
            )
        elif found[h] is None:
            lines.append(f"  unknown  {kind:<9} {h}  {_damage_text(None)}")
        else:
            lines.append(f"  ok       {kind:<9} {h}")
    head = f"store {store.root}/: {len(done)} finished stage(s) checked, {len(bad)} damaged" + (
        " (the next benchmark.run of a table using them recomputes them)" if bad else ""
    )
    return [head] + lines, bool(bad)


def _add_shard_progress(st: StageStatus, stage, store: Store) -> None:
    """A stage split into shards (benchmark.shards) that is not done says how many have their record."""
    from benchmark.shards import stage_shards

    n = stage_shards(stage)
    if n > 1 and st.status != "done":
        k = sum(store.shard_done(stage.hash, i, n) for i in range(n))
        st.detail = "; ".join(x for x in (st.detail, f"{k} of {n} shards done") if x)


def _classify_slurm(st: StageStatus, job, queue_error: str | None) -> None:
    if job is None:
        st.status, st.detail = "unknown", f"cannot read the queue: {queue_error}"
    elif job.running:
        st.status, st.detail = "running", job.state
    elif job.live:
        st.status, st.detail = "queued", f"{job.state} ({job.reason})" if job.reason else job.state
    else:
        st.status = "failed"
        st.detail = {
            "COMPLETED": "the job ended without the stage's result",
            "ENDED": "left the queue (no accounting record)",
        }.get(job.state, job.state)


def _explain_dependencies(statuses: list[StageStatus], graph: StageGraph) -> None:
    """A stage cancelled because an input failed says which one."""
    by_hash = {s.hash: s for s in statuses}
    for st in statuses:
        if st.status == "failed" and st.detail.startswith("CANCELLED"):
            bad = [d for d in graph.stages[st.hash].deps if by_hash[d].status == "failed"]
            if bad:
                st.detail += f": its input {', '.join(bad)} failed"


def _last_attempt(store: Store, stage_hash: str) -> str | None:
    attempts = store.stage_info(stage_hash).get("attempts") or []
    return attempts[-1].get("started") if attempts else None


def format_statuses(graph: StageGraph, statuses: list[StageStatus], store: Store, logs: bool = False) -> str:
    counts = {
        k: sum(s.status == k for s in statuses)
        for k in ("done", "damaged", "running", "queued", "failed", "pending", "unknown")
    }
    lines = [
        f"Table {graph.table.name} (profile {graph.profile}), store {store.root}/: {len(statuses)} stages: "
        + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    ]
    lines.append(f"  {'status':<8} {'kind':<9} {'hash':<{HASH_LEN}}  {'what':<42} {'job':<10} detail")
    for s in statuses:
        detail = s.detail
        if s.status == "failed" and s.log:
            detail = f"{detail}; log {s.log}" if detail else f"log {s.log}"
        lines.append(f"  {s.status:<8} {s.kind:<9} {s.hash:<{HASH_LEN}}  {s.what:<42} {s.job_id or '-':<10} {detail}")
        if logs and s.status == "failed" and s.log:
            lines += ["      | " + ln for ln in (tail(s.log) or "(log is empty or absent)").splitlines()]
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    """Errors follow data/cli.py (user error: one line, exit 2; Ctrl-C: exit 130)."""
    argv = sys.argv[1:] if argv is None else argv
    flags = {a for a in argv if a.startswith("-")}
    bad = flags - FLAGS
    if bad:
        raise UsageError(f"unknown flag(s) {sorted(bad)}; flags: {', '.join(sorted(FLAGS))}")
    if flags & {"-h", "--help"}:
        print(__doc__)
        return 0
    opts, _, overrides = parse_args([a for a in argv if not a.startswith("-")])
    overrides = [o for o in overrides if not o.startswith("slurm.")]  # cluster settings change no hash
    verify = "--verify" in flags
    if not opts["table"] and verify:
        lines, damaged = verify_store(Store(opts["store"]))
        print("\n".join(lines))
        return 1 if damaged else 0
    if not opts["table"]:
        raise UsageError(
            f"say which table: table=<name> (or --verify alone for the whole store); "
            f"valid tables: {', '.join(list_tables())}"
        )
    from benchmark.config import HydraResolver
    from benchmark.stages import expand

    resolver = HydraResolver(opts["profile"], overrides, config_dir=opts["config_dir"])
    store = Store(opts["store"])
    rows = opts["rows"].split(",") if opts["rows"] else None
    any_damaged = False
    for name in opts["table"].split(","):
        graph = expand(load_table(name).select(rows), resolver)
        statuses = stage_statuses(graph, store)
        if verify:
            any_damaged |= mark_damaged(statuses, store, graph)
        print(format_statuses(graph, statuses, store, logs="--logs" in flags))
        out = Path(opts["results"]) / graph.profile / f"table_{graph.table.name}.md"
        print(f"  table: {out}" + ("" if out.exists() else " (not written yet)"))
    return 1 if any_damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
