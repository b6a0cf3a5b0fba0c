"""The manifest of a finished stage: `runs/<hash>/MANIFEST.json` lists every file of the stage folder
(relative path, size, content hash). The store writes it after the stage's records and before
`DONE`, and checks it before a finished stage is reused (benchmark/local.py) and in
`python -m benchmark.status --verify`: a file deleted, added or changed since the stage finished
makes the stage damaged, and a damaged stage is recomputed instead of trusted.

Hashes: sha256 of the whole file up to LARGE bytes; above that (model weights, checkpoints, mp4s),
sha256 of the size and the first and last END_BYTES. Whole-file hashing of a paper-size train stage
(several GB of weights and optimizer state per checkpoint) would add minutes to every rerun, and
the damage seen in practice (a truncated copy, a deleted or replaced file, a torn write) changes the
size or the ends; a change in the middle of a large file of the same size is not detected.
Verification recomputes the same hashes, so checking a store costs one read of its small files and
2 MiB per large one; `hashes=False` compares names and sizes only (one stat per file), what the
runner does before each reuse (benchmark.local.check_finished), `benchmark.status --verify` hashes.

Durability: while hashing, each file is fsynced, so once the (itself fsynced) manifest and then
DONE are on disk, the outputs they describe are too.

Not listed: the manifest itself, DONE, `slurm.json` (submission bookkeeping, not an output), and
names starting with "." (temp files of writers that were killed: never data).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data.atomic import atomic_write_json

MANIFEST = "MANIFEST.json"
VERSION = 1
LARGE = 8 * 1024 * 1024  # files above this get the cheap hash
END_BYTES = 1024 * 1024  # ... of their first and last MiB (and their size)
NOT_LISTED = {MANIFEST, "DONE", "slurm.json"}


def file_hash(path: Path, size: int, sync: bool = False) -> str:
    """`sha256:<hex>` of the content, or `ends-sha256:<hex>` of (size, first and last MiB) for a
    file above LARGE bytes. `sync`: fsync the file as well (it is open anyway)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= LARGE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            kind = "sha256"
        else:
            h.update(str(size).encode() + b"\n")
            h.update(f.read(END_BYTES))
            f.seek(size - END_BYTES)
            h.update(f.read(END_BYTES))
            kind = "ends-sha256"
        if sync:
            os.fsync(f.fileno())
    return f"{kind}:{h.hexdigest()}"


def listed_files(folder: Path) -> list[str]:
    """Relative paths (posix) of the files a manifest covers, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            if name.startswith(".") or (rel_dir == Path(".") and name in NOT_LISTED):
                continue
            out.append((rel_dir / name).as_posix())
    return sorted(out)


def write_manifest(folder: str | Path) -> Path:
    """List every file of `folder` with its size and hash (fsyncing each), then write the manifest."""
    folder = Path(folder)
    files = {}
    for rel in listed_files(folder):
        p = folder / rel
        size = p.stat().st_size
        files[rel] = {"size": size, "hash": file_hash(p, size, sync=True)}
    return atomic_write_json(folder / MANIFEST, {"version": VERSION, "files": files})


def verify(folder: str | Path, hashes: bool = True) -> list[str] | None:
    """What differs from the manifest, one line per file (`missing x`, `extra x`, `changed x (...)`);
    [] when the folder matches; None when there is no manifest (a stage finished before manifests
    existed). `hashes=False` compares names and sizes only."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        expected = doc["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return [f"{MANIFEST} is unreadable ({e})"]
    present = set(listed_files(folder))
    problems = [f"missing {rel}" for rel in sorted(set(expected) - present)]
    problems += [f"extra {rel}" for rel in sorted(present - set(expected))]
    for rel in sorted(present & set(expected)):
        want = expected[rel]
        size = (folder / rel).stat().st_size
        if size != want["size"]:
            problems.append(f"changed {rel} (size {size} bytes, recorded {want['size']})")
        elif hashes and file_hash(folder / rel, size) != want["hash"]:
            problems.append(f"changed {rel} (content differs from its recorded hash)")
    return problems
