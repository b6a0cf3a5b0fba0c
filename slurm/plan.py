"""Which pending work goes into which job array, and which jobs each task waits for.

Pure functions over plain data, so the plan is unit-tested without a cluster.

One array per (kind, level): `level` is how many pending items of the same kind an item waits for
in a chain (train epoch 2 after epoch 1; also through items of other kinds: the merge of an evaluate
stage's shards after the merge of its generate stage's shards), because a task of an array cannot reliably wait for another
task of the same array (SLURM rejects it as a circular dependency while the array is one record).
So a table gives: testset | train level 0 (epoch 1) | train level 1 (epoch 2) | generate | evaluate
(with benchmark.shards > 1: generate shards | merge | evaluate shards | merge-2).
Arrays come out in an order where every array follows the arrays its tasks wait for.

Each task waits for exactly the items it needs (`Task.needs`); those are either in an earlier array
of this plan or already queued / running on the cluster (`running`, item -> job id), which is then
waited for instead of being submitted again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter


@dataclass(frozen=True)
class Item:
    key: str  # e.g. a stage hash
    kind: str  # stage kind: resources (configs/slurm kinds.<kind>) and array grouping
    deps: tuple[str, ...] = ()  # keys of the items this one needs


@dataclass
class ArrayPlan:
    kind: str
    level: int
    keys: list[str] = field(default_factory=list)  # task i runs keys[i]
    needs: dict[str, list[str]] = field(default_factory=dict)  # key -> keys it waits for (not done)

    @property
    def name(self) -> str:
        return self.kind if self.level == 0 else f"{self.kind}-{self.level + 1}"

    def union(self) -> list[str]:
        """Every key some task of this array waits for (what the whole array depends on)."""
        return list(dict.fromkeys(k for key in self.keys for k in self.needs[key]))


def plan_arrays(
    items: Iterable[Item], is_done, running: Mapping[str, str] | None = None, kind_order: Iterable[str] = ()
) -> list[ArrayPlan]:
    """Arrays for the items that are neither done nor running, in submission order.

    `is_done(key)`: finished (no waiting); `running`: key -> job id of work already queued or
    running (waited for, not submitted). A dependency that is none of done / running / submitted
    here is an error: the plan would wait for something nobody will run.
    """
    running = dict(running or {})
    items = {it.key: it for it in items}
    todo = [it for it in items.values() if not is_done(it.key) and it.key not in running]
    todo_keys = {it.key for it in todo}
    below: dict[tuple[str, str], int] = {}
    visiting: set[str] = set()

    def count_below(key: str, kind: str) -> int:
        # the most pending items of `kind` on one chain of pending items below `key` (itself excluded)
        if (key, kind) not in below:
            if key in visiting:
                raise ValueError(f"the work waits for itself in a cycle through {key}")
            visiting.add(key)
            deps = [d for d in items[key].deps if d in todo_keys]
            below[(key, kind)] = max((count_below(d, kind) + (items[d].kind == kind) for d in deps), default=0)
            visiting.discard(key)
        return below[(key, kind)]

    def level_of(key: str) -> int:
        # counted through items of other kinds too: a merge task of an evaluate stage waits (through the
        # evaluate shards) for the merge task of its generate stage, so they cannot share an array
        return count_below(key, items[key].kind)

    arrays: dict[tuple[str, int], ArrayPlan] = {}
    for it in todo:
        missing = [d for d in it.deps if d not in items and not is_done(d) and d not in running]
        if missing:
            raise ValueError(f"{it.kind} {it.key} needs {missing}, which are neither done, running nor planned")
        plan = arrays.setdefault((it.kind, level_of(it.key)), ArrayPlan(it.kind, level_of(it.key)))
        plan.keys.append(it.key)
        plan.needs[it.key] = [d for d in it.deps if not is_done(d)]
    return _ordered(arrays, list(kind_order))


def _ordered(arrays: dict[tuple[str, int], ArrayPlan], kind_order: list[str]) -> list[ArrayPlan]:
    """Arrays sorted so each comes after those it waits for; ties by kind order, then level."""
    where = {k: key for key, a in arrays.items() for k in a.keys}
    graph = {key: {where[d] for k in a.keys for d in a.needs[k] if d in where} for key, a in arrays.items()}
    rank = {k: i for i, k in enumerate(kind_order)}
    sorter = TopologicalSorter(graph)
    try:
        sorter.prepare()
    except CycleError as e:
        raise ValueError(f"the arrays wait for each other in a cycle: {e.args[1]}") from e
    out = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda key: (rank.get(key[0], len(rank)), key[0], key[1]))
        for key in ready:
            out.append(arrays[key])
            sorter.done(key)
    return out


def dependency_string(job_ids: Iterable[str], kind: str = "afterok") -> str | None:
    """`afterok:12_0:13` for sbatch --dependency / scontrol update, or None when nothing to wait for."""
    ids = list(dict.fromkeys(job_ids))
    return f"{kind}:" + ":".join(ids) if ids else None
