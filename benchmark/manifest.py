"""The manifest of a finished stage: `runs/<hash>/MANIFEST.json` lists every file of the stage folder
(relative path, size, content hash). The store writes it after the stage's records and before
`DONE`, and checks it before a finished stage is reused (benchmark/local.py) and in
`python -m benchmark.status --verify`: a file deleted, added or changed since the stage finished
makes the stage damaged, and a damaged stage is recomputed instead of trusted (with every stage
made from it).

Hashes: sha256 of the whole file (manifest version 2). Version 1 manifests (stages finished before)
hashed files above 8 MiB by their size and first and last MiB only (`ends-sha256:`); they are
still read, and checked that way.

Before sealing, every output must pass `check_file`: a PNG must verify (PIL: chunks and CRCs), a
JSON file parse. A stage whose output does not is not sealed (no manifest, no DONE): the error
names the file, and the next run redoes it.

Checking on reuse (`verify(..., reuse=True)`, every `benchmark.run`): names and sizes with one stat
per file, and the content hash of every file whose stat signature (size, mtime_ns, ctime_ns, inode)
differs from the one it had when it was last hashed and found intact. Those signatures are cached in
the stage folder (`.verified.json`, not listed). So an untouched multi-GB checkpoint is not read on
every rerun, while any write to a file, of any size, is caught: a write changes mtime and ctime, and
ctime cannot be set back from user space (restoring mtime with `touch -d` / os.utime moves ctime).
What the cache cannot catch: changes that bypass the file system's metadata (bit rot on the disk,
a write to the raw block device, a remote writer on a network file system whose client caches
attributes, a clock set back to forge ctime). `benchmark.status --verify` hashes every file in full
whatever the cache says, for those. Cost: sha256 runs at 0.3-1.8 GB/s per core on the dev CPU, by load
(docs/benchmark.md, "Checking weights by hash"), so a touched 17 GiB checkpoint costs 10-60 s of
hashing plus reading it from disk.

Durability: while hashing, each file is fsynced, so once the (itself fsynced) manifest and then
DONE are on disk, the outputs they describe are too.

Not listed: the manifest itself, DONE, `slurm.json` (submission bookkeeping, not an output), and
names starting with "." (temp files of writers that were killed: never data; the `.verified.json` cache).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from data.atomic import atomic_write_json
from data.cli import InputError

MANIFEST = "MANIFEST.json"
VERIFIED = ".verified.json"  # {rel: [size, mtime_ns, ctime_ns, inode, hash]}: last found intact
VERSION = 2
LARGE = 8 * 1024 * 1024  # version 1: files above this had the cheap hash
END_BYTES = 1024 * 1024  # ... of their first and last MiB (and their size)
NOT_LISTED = {MANIFEST, "DONE", "slurm.json"}


class DamagedOutput(InputError):
    """An output of a stage that does not pass `check_file`: the stage is not sealed."""


def file_hash(path: Path, size: int, sync: bool = False, kind: str = "sha256") -> str:
    """`sha256:<hex>` of the whole content, or (kind `ends-sha256`, version 1 manifests) of the size
    and the first and last MiB of a file above LARGE bytes. `sync`: fsync the file as well."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if kind == "sha256" or size <= LARGE:
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


def _kind(recorded_hash: str) -> str:
    return recorded_hash.split(":", 1)[0]


def check_file(path: Path) -> str | None:
    """Why an output cannot be sealed, or None: a PNG must pass PIL's verify (chunk CRCs: a truncated
    or overwritten frame fails), a .json file must parse."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            from PIL import PngImagePlugin  # not Image.open: ultralytics patches it (data/video_io.py)

            with PngImagePlugin.PngImageFile(str(path)) as img:
                img.verify()
        elif suffix == ".json":
            json.loads(path.read_bytes())
    except (OSError, SyntaxError, ValueError) as e:
        return f"{path}: damaged ({path.stat().st_size} bytes; {e})"
    return None


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


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
    """Check every file of `folder` (`check_file`: DamagedOutput names the first that fails, and nothing
    is written), hash and fsync it, then write the manifest and the signatures cache."""
    folder = Path(folder)
    files, seen = {}, {}
    for rel in listed_files(folder):
        p = folder / rel
        problem = check_file(p)
        if problem:
            raise DamagedOutput(f"{problem}; stage folder {folder} not sealed: the next run redoes it")
        size = p.stat().st_size
        files[rel] = {"size": size, "hash": file_hash(p, size, sync=True)}
        seen[rel] = _signature(p.stat()) + [files[rel]["hash"]]
    out = atomic_write_json(folder / MANIFEST, {"version": VERSION, "files": files})
    _save_verified(folder, seen)
    return out


# records about the attempt, not outputs: left out of the digest (provenance may be rewritten)
NOT_DIGESTED = {"stage.json"}


def digest(folder: str | Path) -> str | None:
    """sha256 of what a finished stage's manifest says about its outputs (every entry but stage.json,
    the record of its attempts and provenance); None without a readable manifest. A stage made from
    it records this (benchmark/store.py), so an input recomputed with other outputs is noticed
    (benchmark/local.py); one recomputed to the same bytes is not, rightly."""
    try:
        files = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    kept = {k: v for k, v in files.items() if k not in NOT_DIGESTED}
    return "sha256:" + hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _load_verified(folder: Path) -> dict:
    try:
        doc = json.loads((folder / VERIFIED).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_verified(folder: Path, seen: dict) -> None:
    try:
        atomic_write_json(folder / VERIFIED, seen, indent=None)
    except OSError:  # a read-only store: the next reuse hashes again, nothing is lost
        pass


def verify(folder: str | Path, hashes: bool = True, reuse: bool = False) -> list[str] | None:
    """What differs from the manifest, one line per file (`missing x`, `extra x`, `changed x (...)`);
    [] when the folder matches; None when there is no manifest (a stage finished before manifests
    existed). `hashes=False` compares names and sizes only; `reuse=True` (the runner's check) hashes
    only the files whose stat signature changed since they were last found intact, and records the
    ones found intact again."""
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
    seen = _load_verified(folder) if reuse else {}
    updated = False
    for rel in sorted(present & set(expected)):
        want = expected[rel]
        st = (folder / rel).stat()
        if st.st_size != want["size"]:
            problems.append(f"changed {rel} (size {st.st_size} bytes, recorded {want['size']})")
            continue
        if not hashes or (reuse and seen.get(rel) == _signature(st) + [want["hash"]]):
            continue
        if file_hash(folder / rel, st.st_size, kind=_kind(want["hash"])) != want["hash"]:
            problems.append(f"changed {rel} (content differs from its recorded hash)")
        elif reuse:
            seen[rel], updated = _signature(st) + [want["hash"]], True
    if updated and not problems:
        _save_verified(folder, seen)
    return problems
