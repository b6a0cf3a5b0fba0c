"""Small file I/O shared by every layer: atomic writes (a reader sees the old file or the new one,
never half) and reading versioned JSON files with errors that name the file and line.

Lives in `data/`, the package every other one may import (DESIGN.md's dependency direction).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, fsync, then os.replace: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`data` written to a temp file beside `path`, then renamed onto it (pickled payloads, features)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, **dumps_kw) -> Path:
    """JSON (indent 1, sorted keys unless `dumps_kw` says otherwise) written atomically."""
    kw = dict(indent=1, sort_keys=True, default=str) | dumps_kw
    return atomic_write_text(path, json.dumps(obj, **kw) + "\n")


@contextmanager
def atomic_path(path: str | Path, mode: int | None = 0o644) -> Iterator[Path]:
    """`with atomic_path(out) as tmp: save(tmp)`: a temp file beside `path`, renamed onto it on
    success (permissions `mode`, since mkstemp makes 0600 and caches may be shared), removed on error.
    For writers that want a file name (torch.save, torch.jit.save, ffmpeg, ultralytics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """`with atomic_dir(out / "videos") as tmp: ...write into tmp...` -> renamed to `target` on success.

    On an exception the temp folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        # os.replace cannot replace a non-empty folder: move the old one aside first, then drop it
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def read_versioned_json(path: str | Path, version: int, what: str) -> dict:
    """A JSON object whose "version" must equal `version`; errors name the file (and the line)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(doc, dict) or doc.get("version") != version:
        got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: {what} version {got!r}, expected {{\"version\": {version}, ...}}")
    return doc
