"""Which code and libraries made a stage: the git commit (and whether the tree was dirty), the lock file
it ran under (its sha256, and whether the installed packages were exactly the lock's: benchmark/lock.py),
the version of every installed package, the device, torch's thread count and the command. Recorded in each stage's
stage.json when it finishes (benchmark/store.py), carried into the table JSON and a caption footnote,
and compared with the running code before a finished stage is reused (benchmark/run_table.py):
`benchmark.provenance=record` (default) flags a stage made by another commit, under another lock or
with other package versions; `strict` recomputes it and the stages built on it.

A stage's hash says what was computed (its config), not with which code: a stage made before a bug
fix keeps its hash. That is what this record is for.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from benchmark import lock
from data.cache import sha256_file

# The libraries a table's caption names (every installed package is recorded, and compared)
LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "ultralytics",
    "torchmetrics",
    "accelerate",
    "peft",
    "numpy",
    "pillow",
)
MODES = ("record", "strict")
REPO_ROOT = Path(__file__).resolve().parents[1]


def git_state(root: str | Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, tree dirty) of the checkout the code runs from; (None, None) outside a git checkout.
    Dirty = tracked files differ from HEAD. Neither untracked files nor results/ count: the tables a run
    writes there (committed ones included) are its output, not the code that made it."""

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    return head.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)


def device_name() -> str:
    """The accelerator this process sees (the first CUDA device), else the CPU."""
    cpu = f"cpu: {platform.processor() or platform.machine()}"
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
    except RuntimeError as e:  # a broken CUDA setup must not stop a stage from being recorded
        return f"{cpu} (CUDA unusable: {e})"
    return cpu


def torch_threads() -> int | None:
    """The intra-op threads of torch in this process: CPU results (trained weights included) are
    bit-identical across runs only at the same thread count, which changes the order of float sums."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels dispatch to (`AVX512`, `AVX2`, `DEFAULT`, ...):
    CPUs of two capabilities run other kernels, whose float sums may differ in the last bits."""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return None


def command_line() -> str:
    return shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def current() -> dict:
    """The provenance of what this process computes now."""
    commit, dirty = git_state()
    return {
        "commit": commit,
        "dirty": dirty,
        "lock": {k: v for k, v in lock.state().items() if k != "differs"},
        "versions": dict(lock.installed()),  # every installed package (metadata only, nothing imported)
        "device": device_name(),
        "torch_threads": torch_threads(),
        "cpu_capability": cpu_capability(),
        "command": command_line(),
        "python": platform.python_version(),
    }


SHOWN_VERSIONS = 5  # package differences named one by one; the rest counted


def mismatches(recorded: Mapping | None, now: Mapping) -> list[str]:
    """Why a finished stage was made by other code: another commit, another lock file, other package
    versions, or no record at all (a stage from before provenance was recorded). [] = the same code.
    A record from before locks were recorded compares its few library versions only, and says so."""
    if not recorded:
        return ["no provenance record (made before stages recorded one)"]
    out = []
    if recorded.get("commit") != now.get("commit"):
        out.append(f"commit {_short(recorded.get('commit'))} (now {_short(now.get('commit'))})")
    old_lock, new_lock = recorded.get("lock"), now.get("lock") or {}
    if old_lock is None:
        out.append("lock unknown (recorded before stages recorded their lock)")
    elif old_lock.get("sha256") != new_lock.get("sha256"):
        out.append(
            f"lock {old_lock.get('file')} {_short(old_lock.get('sha256'))} "
            f"(now {new_lock.get('file')} {_short(new_lock.get('sha256'))})"
        )
    old, new = recorded.get("versions") or {}, now.get("versions") or {}
    names = sorted(set(old) | set(new)) if old_lock is not None else [lib for lib in LIBRARIES if lib in old]
    changed = [f"{n} {old.get(n)} (now {new.get(n)})" for n in names if old.get(n) != new.get(n)]
    out += changed[:SHOWN_VERSIONS]
    if len(changed) > SHOWN_VERSIONS:
        out.append(f"{len(changed) - SHOWN_VERSIONS} more package versions differ")
    return out


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "unknown"


def files_sha256(path: str | Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `path` (or of the file itself, keyed by its
    name): the content of a set of weights, so two builds with the same settings can be compared."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {(f.name if f == path else f.relative_to(path).as_posix()): sha256_file(f) for f in files}


def summarize(records: Iterable[Mapping | None]) -> dict:
    """The distinct commits, locks, library versions and devices of a table's stages (table JSON)."""
    records = list(records)
    commits: dict[str, bool] = {}
    versions: dict[str, set] = {lib: set() for lib in LIBRARIES}
    locks: dict[tuple, bool] = {}  # (lock file, sha256) -> every stage under it matched it
    devices: set[str] = set()
    threads: set[str] = set()  # "<torch threads> x <CPU capability>": what CPU float sums depend on
    for r in records:
        if not r:
            continue
        key = r.get("commit") or "unknown"
        commits[key] = commits.get(key, False) or bool(r.get("dirty"))
        recorded = r.get("versions") or {}
        for lib in LIBRARIES:
            if lib in recorded:
                versions[lib].add(str(recorded[lib]))
        rec_lock = r.get("lock") or {}
        lock_key = (rec_lock.get("file"), rec_lock.get("sha256"))
        locks[lock_key] = locks.get(lock_key, True) and bool(rec_lock.get("matches"))
        devices.add(str(r.get("device")))
        threads.add(f"{r.get('torch_threads')} x {r.get('cpu_capability')}")
    return {
        "commits": [{"commit": c, "dirty": d} for c, d in sorted(commits.items())],
        "locks": [{"file": f, "sha256": h, "matches": m} for (f, h), m in sorted(locks.items(), key=str)],
        "versions": {lib: sorted(v) for lib, v in versions.items() if v},
        "devices": sorted(devices),
        "threads": sorted(threads),
        "stages_without_record": sum(1 for r in records if not r),
    }


def footnote(summary: Mapping) -> str:
    """One caption sentence: 'Code: commit 1a2b3c4d5e (dirty); lock requirements/py3.11.txt 0a1b2c3d4e;
    torch 2.4.1, ...; device: cpu: x86_64.' ("(not matched)": the installed packages differed from it)."""
    if not summary.get("commits"):
        return ""
    commits = ", ".join(_short(c["commit"]) + (" (dirty)" if c["dirty"] else "") for c in summary["commits"])
    libs = ", ".join(f"{lib} {'/'.join(v)}" for lib, v in summary["versions"].items())
    locks = ", ".join(
        "unknown"
        if not lk.get("file")
        else f"{lk['file']} {_short(lk.get('sha256'))}" + ("" if lk.get("matches") else " (not matched)")
        for lk in summary.get("locks") or []
    )
    s = f"Code: commit {commits}; lock {locks or 'unknown'}; {libs}; device: {', '.join(summary['devices'])}"
    if summary.get("threads"):
        s += f" (torch threads x CPU kernels: {', '.join(summary['threads'])})"
    if summary.get("stages_without_record"):
        s += f"; {summary['stages_without_record']} stage(s) without a provenance record"
    return s + "."


def check_mode(mode) -> str:
    if mode not in MODES:
        from data.cli import InputError

        raise InputError(f"benchmark.provenance={mode!r}: valid are {', '.join(MODES)}")
    return mode


# ---------------------------------------------------------------- finished stages of a graph
def flag_stages(graph, store, now: Mapping | None = None) -> dict[str, list[str]]:
    """{hash: reasons} of the graph's finished stages made by other code than `now` (default: this
    process's). Reads each stage's stage.json."""
    now = current() if now is None else now
    out = {}
    for s in graph.order():
        if store.is_done(s.hash):
            why = mismatches(store.stage_info(s.hash).get("provenance"), now)
            if why:
                out[s.hash] = why
    return out


def with_dependents(graph, flagged: Iterable[str]) -> list[str]:
    """`flagged` plus every stage of the graph built on one of them, in graph order: under `strict` a
    recomputed stage invalidates what was computed from it."""
    bad = set(flagged)
    for s in graph.order():  # topological: inputs first
        if any(d in bad for d in s.deps):
            bad.add(s.hash)
    return [s.hash for s in graph.order() if s.hash in bad]


def apply(graph, store, mode: str, echo=print, now: Mapping | None = None) -> dict[str, list[str]]:
    """Before a run: say which finished stages other code made; under `strict` set them (and the
    finished stages built on them) aside in `<store>/.stale/` so they are recomputed. Returns the flags."""
    flagged = flag_stages(graph, store, now)
    for h, why in flagged.items():
        s = graph.stages[h]
        action = (
            "it is recomputed (benchmark.provenance=strict)"
            if mode == "strict"
            else "reused; benchmark.provenance=strict recomputes it"
        )
        echo(
            f"warning: stage {s.kind} {h} (rows: {', '.join(s.rows)}) was made by other code: "
            f"{'; '.join(why)}; {action}"
        )
    if mode == "strict":
        for h in with_dependents(graph, flagged):
            if store.is_done(h):
                with store.lock(h, echo):
                    if store.is_done(h):
                        moved = store.set_aside(h, into=STALE)
                        if h not in flagged:
                            echo(
                                f"stage {graph.stages[h].kind} {h} is built on a recomputed stage: recomputed "
                                f"too (folder moved to {moved})"
                            )
    return flagged


STALE = ".stale"  # <store>/.stale/<hash>-<time>/: stages set aside by benchmark.provenance=strict
