"""The results store: one folder per stage, `runs/<hash>/`, finished when its `DONE` marker exists.

A stage writes its outputs straight into its folder (so a trainer killed mid-stage resumes from its
own checkpoints there on the next run); the store then writes, each atomically, `stage_config.yaml` (the
config that identifies the stage), `run_config.yaml` (the full config the runner executed),
`stage.json` (with the code's provenance once finished, benchmark/provenance.py), `result.json`,
`MANIFEST.json` (every file's size and hash, benchmark/manifest.py),
and last `DONE`. Readers trust a folder only when `DONE` exists, so a
killed stage is never mistaken for a finished one. A stage split into shards (benchmark/shards.py)
also has `shards/<i>-of-<n>/result.json`, each shard's record, written last by that shard.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from benchmark import provenance
from benchmark.manifest import digest as manifest_digest
from benchmark.manifest import verify as verify_manifest
from benchmark.manifest import write_manifest
from data.atomic import atomic_dir, atomic_write_json, atomic_write_text, sweep_temps  # noqa: F401  (re-exported)

DONE = "DONE"
RESULT = "result.json"
CONFIG = "stage_config.yaml"  # not config.yaml: a train stage folder is also the trainer's run folder
RUN_CONFIG = "run_config.yaml"
STAGE = "stage.json"
FAILED = "FAILED"  # the last attempt ended with an exception: its summary (JSON)
SHARDS = "shards"  # runs/<hash>/shards/<i>-of-<n>/ (benchmark/shards.py)
DAMAGED = ".damaged"  # runs/.damaged/<hash>-<time>/: finished stages found damaged, set aside
STALE = ".stale"  # runs/.stale/<hash>-<time>/: made by other code (provenance=strict) or from a redone input


# ------------------------------------------------------------------------------ atomic writes
def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True, default_flow_style=False))


# ------------------------------------------------------------------------------ the store
class Store:
    """`runs/` (or any root): stage folders by hash."""

    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)

    @contextmanager
    def lock(self, stage_hash: str, echo=print):
        """Hold the stage exclusively while it runs, so two `benchmark.run` of tables that share a
        stage (or a stage requeued while a copy still runs) never write one folder at once: the
        second waits, then finds the stage done. An OS lock (flock) on `.locks/<hash>`: it is freed
        when its process ends, however it ends, so it never goes stale."""
        import fcntl

        path = self.root / ".locks" / stage_hash
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                echo(f"stage {stage_hash} is being run by {f.read().strip() or 'another process'}; waiting for it")
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def dir(self, stage_hash: str) -> Path:
        return self.root / stage_hash

    def is_done(self, stage_hash: str) -> bool:
        return (self.dir(stage_hash) / DONE).is_file()

    def prepare(self, stage) -> Path:
        """What a job needs to run the stage by hash: run_config.yaml, stage_config.yaml, and stage.json
        with kind, deps, params, rows and the hashed config (benchmark.job.load_stage reads it back).

        The identity is read back from stage.json, not config.yaml: a training stage's folder is the
        trainer's run folder, and the trainer writes its own config.yaml there."""
        return self._record(stage)

    def begin(self, stage) -> Path:
        """Create (or reuse, after an interrupted attempt) the stage folder; record the attempt.
        A reused folder is first swept of the temp entries its killed writers left (data/atomic.py)."""
        resumed = self.dir(stage.hash).exists()
        if resumed:
            # (ownerless too: the trainer's checkpoint temp; this process holds the stage's lock)
            sweep_temps(self.dir(stage.hash), recursive=True, ownerless=True)
            (self.dir(stage.hash) / FAILED).unlink(missing_ok=True)
        return self._record(stage, attempt={"started": _now(), "resumed": resumed})

    def _record(self, stage, attempt: dict | None = None) -> Path:
        d = self.dir(stage.hash)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(d / CONFIG, stage.config)
        atomic_write_yaml(d / RUN_CONFIG, stage.run_cfg)
        info = self.stage_info(stage.hash)
        info.update(
            kind=stage.kind,
            hash=stage.hash,
            deps=list(stage.deps),
            params=stage.params,
            rows=list(stage.rows),
            config=stage.config,
        )
        if attempt is not None:
            info.setdefault("attempts", []).append(attempt)
        atomic_write_json(d / STAGE, info)
        return d

    def commit(self, stage, result: dict | None) -> Path:
        """Write result.json, stage.json (with the digest of each input stage), the manifest (every
        output checked first: one that does not pass raises benchmark.manifest.DamagedOutput and the
        stage is not sealed), then DONE (last). Paths in `result` are stored relative to the folder."""
        d = self.dir(stage.hash)
        result = _relative_paths(dict(result or {}), d)
        atomic_write_json(d / RESULT, result)
        info = self.stage_info(stage.hash)
        if info.get("attempts"):
            info["attempts"][-1]["finished"] = _now()
        info["provenance"] = provenance.current()  # the code that made it (benchmark/provenance.py)
        # the manifest digest of each input stage: a stage made from an input that was recomputed
        # since is not reused (benchmark.local.check_finished)
        info["inputs"] = {dep: manifest_digest(self.dir(dep)) for dep in stage.deps}
        atomic_write_json(d / STAGE, info)
        write_manifest(d)  # every file's size and hash, each fsynced (benchmark/manifest.py)
        atomic_write_text(d / DONE, _now() + "\n")
        (d / FAILED).unlink(missing_ok=True)
        return d

    def fail(self, stage_hash: str, error: BaseException) -> None:
        """Record that the stage's attempt ended with `error` (FAILED, cleared by the next attempt), as
        far as the disk allows: never raises an OSError of its own."""
        interrupted = isinstance(error, KeyboardInterrupt)
        summary = "interrupted (Ctrl-C)" if interrupted else f"{type(error).__name__}: {error}"
        if len(summary) > 500:
            summary = summary[:500] + " ..."
        record = {
            "time": _now(),
            "error": summary,
            "interrupted": interrupted,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        path = self.dir(stage_hash) / FAILED
        try:
            atomic_write_json(path, record)
        except OSError:  # a full disk: the temp file beside it may not fit; try in place, then give up
            try:  # (a torn FAILED reads back as "(unreadable ...)": still a failure, never DONE)
                path.write_text(json.dumps(record) + "\n")
            except OSError:
                pass  # the stage's own error must not be hidden by this one

    def failure(self, stage_hash: str) -> dict | None:
        """The FAILED record of the stage's last attempt, or None (not failed, or a later attempt runs)."""
        p = self.dir(stage_hash) / FAILED
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"error": f"(unreadable {p})"}

    def verify(self, stage_hash: str, hashes: bool = True, reuse: bool = False) -> list[str] | None:
        """What differs in a finished stage's folder from its manifest ([] = intact; None = the stage
        finished before manifests existed). `reuse`: hash only the files touched since they were last
        found intact (the runner's check); else every file in full. benchmark/manifest.py."""
        return verify_manifest(self.dir(stage_hash), hashes=hashes, reuse=reuse)

    def digest(self, stage_hash: str) -> str | None:
        """The digest of a finished stage's manifest (None without one)."""
        return manifest_digest(self.dir(stage_hash))

    def made_from_other_inputs(self, stage_hash: str) -> list[str]:
        """The input stages that changed (were recomputed) since this stage was made from them: their
        manifest digest differs from the one recorded at its commit. [] for a stage recorded before."""
        recorded = self.stage_info(stage_hash).get("inputs") or {}
        now = {d: self.digest(d) if self.is_done(d) else None for d in recorded}
        return [d for d, dg in recorded.items() if None not in (dg, now[d]) and now[d] != dg]

    def set_aside(self, stage_hash: str, into: str = DAMAGED) -> Path:
        """Move a stage folder to `<into>/<hash>-<time>/` (`.damaged`, or `.stale` for
        benchmark.provenance=strict; kept for inspection, never read), so the stage is recomputed from
        nothing in a fresh folder."""
        target = self.root / into / f"{stage_hash}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.dir(stage_hash), target)
        return target

    def result(self, stage_hash: str) -> dict | None:
        """The stage's result.json (paths made absolute again), or None when not done."""
        if not self.is_done(stage_hash):
            return None
        d = self.dir(stage_hash)
        return _read_record(d / RESULT, d, f"delete {d} to recompute the stage")

    # -------------------------------------------------------------- shards (benchmark/shards.py)
    def shard_dir(self, stage_hash: str, index: int, count: int) -> Path:
        """runs/<hash>/shards/<i>-of-<n>/: shard i of n's record and its own files."""
        return self.dir(stage_hash) / SHARDS / f"{index}-of-{count}"

    def shard_done(self, stage_hash: str, index: int, count: int) -> bool:
        return (self.shard_dir(stage_hash, index, count) / RESULT).is_file()

    def commit_shard(self, stage_hash: str, index: int, count: int, result: dict | None) -> Path:
        """The shard's record, written last: paths stored relative to the STAGE folder."""
        path = self.shard_dir(stage_hash, index, count) / RESULT
        atomic_write_json(path, _relative_paths(dict(result or {}), self.dir(stage_hash)))
        return path

    def shard_result(self, stage_hash: str, index: int, count: int) -> dict | None:
        """The record of a finished shard (paths absolute again), or None."""
        path = self.shard_dir(stage_hash, index, count) / RESULT
        if not path.is_file():
            return None
        return _read_record(path, self.dir(stage_hash), f"delete {path.parent} to redo the shard")

    def stage_info(self, stage_hash: str) -> dict:
        """The stage's stage.json ({} before its folder is prepared)."""
        p = self.dir(stage_hash) / STAGE
        return json.loads(p.read_text()) if p.exists() else {}


def _read_record(path: Path, base: Path, remedy: str) -> dict:
    """A result.json (a stage's or a shard's) with its paths made absolute against `base` again;
    invalid JSON fails naming the file and the `remedy`."""
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {remedy}") from e
    return _absolute_paths(res, base)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# A result value is a path when its key ends with one of these; stored relative to the stage folder
# (so the store can be moved or mounted elsewhere) and returned absolute.
_PATH_SUFFIXES = ("_dir", "_path", "_file")
_PATH_KEYS = {"checkpoint", "unet", "log", "videos", "frames", "real", "boxes", "metrics_file"}


def _is_path_key(k: str) -> bool:
    return k in _PATH_KEYS or k.endswith(_PATH_SUFFIXES)


def _relative_paths(res: dict, d: Path) -> dict:
    out = {}
    for k, v in res.items():
        if isinstance(v, Path) or (_is_path_key(k) and isinstance(v, str)):
            p = Path(v)  # a real path (absolute, or relative to the working directory)
            try:
                p = p.resolve().relative_to(d.resolve())
            except ValueError:
                raise ValueError(
                    f"stage {d.name}: result[{k!r}] = {v} lies outside the stage folder {d}; "
                    f"a stage must keep its outputs inside its own folder"
                ) from None
            v = str(p)
        out[k] = v
    return out


def _absolute_paths(res: dict, d: Path) -> dict:
    return {k: (str(d / v) if _is_path_key(k) and isinstance(v, str) else v) for k, v in res.items()}
