"""Small file I/O shared by every layer: atomic writes (a reader sees the old file or the new one,
never half) and reading versioned JSON files with errors that name the file and line.

Lives in `data/`, the package every other one may import (DESIGN.md's dependency direction).

Temp entries. Every writer here first writes a temp file or folder beside its target, named
`.lsa-tmp-<pid>@<host>~<target name>.<random>` (TEMP_PREFIX, then the owner): a writer killed with
SIGKILL leaves one behind. Such entries are never data: `data_entries` (what lists clips, videos and
frames) skips them with every hidden name, and `sweep_temps` removes the stale ones (their process is
gone), which each folder writer does for its own target and the stage runner does for a stage's
folder when the stage starts again.

File modes. mkstemp / mkdtemp create 0600 / 0700 entries; our writers set the modes a plain open()
or mkdir() would give (0666 / 0777 minus the umask), so a store shared by a group works with
`umask 002`; a folder published by `publish_dir` (atomic_dir, save_pretrained_atomic, the trainer's
checkpoints) gets the same for every file in it (`plain_modes`): safetensors writes 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data.cli import InputError, UserError

TEMP_PREFIX = ".lsa-tmp-"
# A temp entry of a process on another host cannot be checked for life; it counts as stale when it
# has not changed for this long (a writer that is alive keeps touching its file or folder).
STALE_OTHER_HOST_S = 24 * 3600


# ------------------------------------------------------------------------------ temp entries
def _temp_prefix(name: str) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}@{socket.gethostname()}~{name}."


def is_temp(path: str | Path) -> bool:
    """A temp entry of one of our atomic writers (finished or left behind by a killed one)."""
    return Path(path).name.startswith(TEMP_PREFIX)


def data_entries(folder: str | Path, dirs: bool | None = None) -> list[Path]:
    """The entries of `folder` that are data, sorted by name: hidden names (our writers' temp
    entries, `.locks`, OS clutter) are left out. `dirs=True`: folders only, `False`: files only."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith("."):
            continue
        if dirs is not None and p.is_dir() != dirs:
            continue
        out.append(p)
    return out


def _owner(name: str) -> tuple[int, str] | None:
    """(pid, host) of a temp entry's name, None when the name is not of that form."""
    if not name.startswith(TEMP_PREFIX) or "~" not in name:
        return None
    owner = name[len(TEMP_PREFIX) :].split("~", 1)[0]
    pid, _, host = owner.partition("@")
    return (int(pid), host) if pid.isdigit() and host else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def is_stale(path: str | Path, now: float | None = None) -> bool:
    """A temp entry whose writer is gone: its process (on this host) has ended, or (another host)
    it has not changed for STALE_OTHER_HOST_S. A reused pid keeps an entry a little longer: harmless."""
    path = Path(path)
    owner = _owner(path.name)
    if owner is None:
        return False
    pid, host = owner
    if host == socket.gethostname():
        return not _alive(pid)
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_OTHER_HOST_S


def sweep_temps(
    folder: str | Path, name: str | None = None, recursive: bool = False, ownerless: bool = False
) -> list[Path]:
    """Remove the stale temp entries in `folder` (only those for target `name` when given; in every
    subfolder too with `recursive`). Entries of live writers are left alone, so concurrent writers
    (two runs, shards) are safe. `ownerless`: also entries whose name carries no owner (the trainer's
    checkpoint folder `.lsa-tmp-step-...`, one name for all its processes): only for a caller that
    knows no writer is alive there (the store, holding the stage's lock). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for root, subdirs, files in os.walk(folder) if recursive else [(str(folder), *_split(folder))]:
        for entry in list(subdirs) + list(files):
            p = Path(root) / entry
            if not is_temp(p) or (name is not None and f"~{name}." not in entry):
                continue
            if not is_stale(p) and not (ownerless and _owner(entry) is None):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                if entry in subdirs:
                    subdirs.remove(entry)  # do not walk into what was removed
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _split(folder: Path) -> tuple[list[str], list[str]]:
    subdirs, files = [], []
    with os.scandir(folder) as it:  # the entry type comes with the listing: no stat per entry
        for e in it:
            (subdirs if e.is_dir(follow_symlinks=False) else files).append(e.name)
    return subdirs, files


# ------------------------------------------------------------------------------ a full disk
class DiskFull(UserError):
    """No space left on the device a stage writes to (errno 28): a storage error, one line."""


# what torch's zip writer (torch.save, accelerate's checkpoints) says when a write fails, errno lost
_TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")


def disk_full(error: BaseException, folder: str | Path) -> bool:
    """Whether `error` comes from a full disk under `folder`: an OSError with errno 28 (ENOSPC) in its
    chain of causes, or a failed write by torch's serialiser (whose message has lost the errno) while
    a 1 MiB probe write into `folder` fails with ENOSPC."""
    import errno

    seen, e = set(), error
    torch_write = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        torch_write |= isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED)
        e = e.__cause__ or e.__context__
    if not torch_write:
        return False
    try:
        probe = make_temp_file(Path(folder) / ".space-check")
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * (1 << 20))
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as probe_error:
        return probe_error.errno == errno.ENOSPC
    return False


# ------------------------------------------------------------------------------ file modes
def umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask can only be read
    by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """What open(..., "w") gives a new file: 0666 minus the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """What mkdir gives a new folder: 0777 minus the umask."""
    return 0o777 & ~umask()


def make_temp_file(path: str | Path, suffix: str = "") -> Path:
    """An empty temp file beside `path` (its parents made), with a plain file's mode. No sweep here:
    file writers fill folders of thousands of files (frame caches), where a scan per write would cost
    O(n^2); a stage's folder is swept when the stage starts again (benchmark/store.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=suffix, dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def make_temp_dir(target: str | Path) -> Path:
    """An empty temp folder beside `target` (its parents made), with a plain folder's mode; stale
    temps of the same target are swept first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(target.parent, name=target.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target.name), dir=target.parent))
    os.chmod(tmp, dir_mode())
    return tmp


# ------------------------------------------------------------------------------ atomic writes
def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, fsync, then os.replace: all or nothing."""
    path = Path(path)
    tmp = make_temp_file(path, suffix=".tmp")
    try:
        with open(tmp, "w") as f:
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
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """`with atomic_path(out) as tmp: save(tmp)`: a temp file beside `path` (same suffix, so writers
    that choose a format by it work), renamed onto it on success, removed on error. Its mode is
    `mode`, or a plain file's (0666 minus the umask) when None.
    For writers that want a file name (torch.save, torch.jit.save, ffmpeg, ultralytics, matplotlib)."""
    path = Path(path)
    tmp = make_temp_file(path, suffix=path.suffix)
    try:
        yield tmp
        os.chmod(tmp, file_mode() if mode is None else mode)  # a writer may have recreated the file
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
    tmp = make_temp_dir(target)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, target)


def save_pretrained_atomic(model, path: str | Path, extra_files: Mapping[str, str] | None = None) -> Path:
    """`model.save_pretrained` (plus `extra_files` {name: text}) into a temporary sibling folder, then
    moved into place, so a reader never sees a half-written folder."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


def plain_modes(folder: str | Path) -> None:
    """Give every file under `folder` a plain file's mode (0666 minus the umask): some writers create
    theirs 0600 whatever the umask (safetensors' weights files), which a group sharing the store
    could not read. Called on a finished temp folder before it is published."""
    want = file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and (st.st_mode & 0o777) != want:
                os.chmod(p, want)


def publish_dir(tmp: str | Path, target: str | Path) -> Path:
    """Move the finished folder `tmp` onto `target`, replacing a folder already there (os.replace
    cannot replace a non-empty folder: the old one is moved aside first, then dropped)."""
    tmp, target = Path(tmp), Path(target)
    plain_modes(tmp)
    if target.exists():
        old = target.parent / f"{_temp_prefix(target.name)}old-{time.monotonic_ns()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def remove_dir(path: str | Path) -> None:
    """Delete a folder so that no reader sees it half deleted: renamed to a temp name first (one
    rename), then removed; a kill in between leaves only a temp entry."""
    path = Path(path)
    if not path.exists():
        return
    gone = path.parent / f"{_temp_prefix(path.name)}del-{time.monotonic_ns()}"
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def publish_dir_once(target: str | Path, save_fn) -> Path:
    """Run `save_fn(tmp_dir)` and move the folder into place unless `target` exists already (first
    writer wins: a concurrent writer that loses the race keeps the winner's folder)."""
    target = Path(target)
    if target.exists():
        return target
    tmp = make_temp_dir(target)
    try:
        save_fn(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_versioned_json(path: str | Path, version: int, what: str) -> dict:
    """A JSON object whose "version" must equal `version`; errors name the file (and the line)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(doc, dict) or doc.get("version") != version:
        got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f'{path}: {what} version {got!r}, expected {{"version": {version}, ...}}')
    return doc
