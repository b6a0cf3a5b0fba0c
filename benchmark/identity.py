"""Stage identity by content, not location: what a weights path or a dataset root stands for in a
stage's hash (benchmark/stages.py).

A resolved config names its inputs by location (`data.root: /data/kitti`, `model.svd:
stabilityai/stable-video-diffusion-img2vid-xt` or `/weights/svd-xt`, `metrics.fvd.weights:
/weights/i3d_torchscript.pt`). The copy of the config that is hashed gets, in their place, what
determines a stage's result (the run config keeps the locations):

  weights  a hub id -> {"hub_commit": <the resolved 40-hex commit>} (model.revision, or the
           cache's refs/<revision|main>, or the hub when it is reachable); a folder in the hub
           cache layout (`.../models--org--name/snapshots/<commit>`) or an `hf download --local-dir`
           folder whose files are unmodified since the download -> the same {"hub_commit": ...};
           any other file -> {"sha256": <hex>}, any other folder -> {"sha256_tree": <hex>} over its
           files' relative paths and sha256 (names starting with "." left out).
           A commit covers the files of the repo, so the repo id is left out: an
           `hf download --local-dir` folder records the commit, not the repo.
  datasets `data.root` is dropped; `data.train.content` and `data.test.content` hold a digest of
           that split's sample list (KITTI: each scene's label file sha256 and image names;
           nuScenes: the sha256 of the version's tables, which list every sample; any other
           dataset: the sha256 tree of the root). The dataset's name, version and split keys stay
           in the config as they are.

A file's sha256 is cached by (real path, size, mtime_ns) in `<LSA_BENCH_CACHE>/sha256-cache.json`,
so a 10 GB file is read once. A value that is not a path or hub id (`tiny`, `full-random`, null)
and the mini profile's foundation parts (already named by their content hash) are left as they
are: the smoke and mini stage hashes are those of the location-based hashing.

A value whose content cannot be told (a path that does not exist, a hub id that cannot be resolved
offline) stays as it is and is listed in `problems`: `--dry-run` prints them and a real run refuses
to start (benchmark/run_table.py), so no stage is ever stored under such a hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_json
from data.cache import bench_cache_root, sha256_file

COMMIT = re.compile(r"^[0-9a-f]{40}$")
SNAPSHOT = re.compile(r"(?:^|/)models--(?P<repo>[^/]+)/snapshots/(?P<rev>[0-9a-f]{40})(?:/|$)")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_DIR_META = Path(".cache") / "huggingface" / "download"  # `hf download --local-dir` records
CACHE_FILE = "sha256-cache.json"


def default_cache_file() -> Path:
    return bench_cache_root() / CACHE_FILE


# ------------------------------------------------------------------------------------ sha256
class Sha256Cache:
    """sha256 of files, remembered by (real path, size, mtime_ns): a changed file is hashed again."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_file()
        self._entries: dict[str, list] | None = None
        self._dirty = False
        self.hashed = 0  # files read by this instance (tests count them)

    def _load(self) -> dict[str, list]:
        if self._entries is None:
            try:
                self._entries = json.loads(self.path.read_text()).get("files", {})
            except (OSError, ValueError, AttributeError):
                self._entries = {}
        return self._entries

    def sha256(self, path: str | Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        entries = self._load()
        hit = entries.get(real)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest_hex = sha256_file(real)
        self.hashed += 1
        entries[real] = [st.st_size, st.st_mtime_ns, digest_hex]
        self._dirty = True
        return digest_hex

    def save(self) -> None:
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"version": 1, "files": self._load()})
            self._dirty = False
        except OSError:
            pass  # a read-only cache folder costs a re-hash next time, nothing else


def visible_files(folder: Path) -> list[Path]:
    """Every file under `folder` (links followed), sorted, without names starting with "."."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------------------------ hub
def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve_hub_commit(repo_id: str, revision: str | None, cache_dir: Path | None = None) -> str | None:
    """The commit `revision` (default main) of `repo_id`: itself when it is a commit, else the hub
    cache's refs/<revision>, else the hub's answer when it is reachable (not HF_HUB_OFFLINE)."""
    revision = revision or "main"
    if COMMIT.match(revision):
        return revision
    ref = (cache_dir or hub_cache_dir()) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if COMMIT.match(commit):
            return commit
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=20).sha
    except Exception:  # unreachable hub, unknown repo: the caller reports it
        return None


def local_dir_commit(folder: Path) -> str | None:
    """The commit of an `hf download --local-dir` folder when every visible file has its download
    record, all of one commit, and no file changed since (huggingface_hub's own test: the file's
    mtime is not after the record's timestamp); else None."""
    meta = folder / LOCAL_DIR_META
    if not meta.is_dir():
        return None
    commits = set()
    for f in visible_files(folder):
        rel = f.relative_to(folder).as_posix()
        record = meta / f"{rel}.metadata"
        try:
            commit, _etag, stamp = record.read_text().splitlines()[:3]
            if f.stat().st_mtime > float(stamp) + 1:
                return None
        except (OSError, ValueError):
            return None
        commits.add(commit.strip())
    return commits.pop() if len(commits) == 1 and COMMIT.match(next(iter(commits))) else None


# ------------------------------------------------------------------------------------ datasets
def _kitti_split(root: Path, data: dict, split: str, sha: Sha256Cache) -> str:
    base = root / str(data.get("split_dir") or "training")
    lines = []
    for scene in (data.get(split) or {}).get("scenes") or []:
        scene = str(scene)
        label = base / "label_02" / f"{scene}.txt"
        images = base / "image_02" / scene
        if not label.is_file() or not images.is_dir():
            raise FileNotFoundError(f"KITTI scene {scene}: {label} or {images}/ not found")
        names = sorted(p.name for p in images.iterdir() if not p.name.startswith("."))
        lines.append(f"{scene} {sha.sha256(label)} {digest(names)} {len(names)}")
    return digest(lines)


def _nuscenes_tables(root: Path, data: dict, sha: Sha256Cache) -> str:
    tables = root / str(data.get("version") or "v1.0-trainval")
    files = sorted(tables.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"nuScenes tables {tables}/*.json not found")
    return digest(f"{f.name} {sha.sha256(f)}" for f in files)


def _tree(root: Path, sha: Sha256Cache) -> str:
    files = visible_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no files")
    return digest(f"{f.relative_to(root).as_posix()} {sha.sha256(f)}" for f in files)


# ------------------------------------------------------------------------------------ the config
class ContentIdentity:
    """Replaces locations by content in the copy of a config that is hashed (module docstring).
    `legacy=True` leaves every config as it is: the location-based hashes of STAGE_SCHEMA 1, for
    carrying an old store over (benchmark/rehash.py)."""

    def __init__(
        self,
        sha: Sha256Cache | None = None,
        hub_commit: Callable[[str, str | None], str | None] | None = None,
        legacy: bool = False,
    ):
        self.sha = sha or Sha256Cache()
        self.hub_commit = hub_commit or resolve_hub_commit
        self.legacy = legacy
        self.problems: dict[str, str] = {}  # "key=value" -> why its content is unknown
        self._memo: dict[tuple, Any] = {}

    # -- one value
    def weights(self, key: str, value: Any, hub: bool, revision: str | None = None) -> Any:
        if not isinstance(value, str) or not value:
            return value
        memo = (key, value, hub, revision)
        if memo not in self._memo:
            self._memo[memo] = self._weights(key, value, hub, revision)
        return self._memo[memo]

    def _weights(self, key: str, value: str, hub: bool, revision: str | None) -> Any:
        path = Path(value).expanduser()
        if path.exists():
            m = SNAPSHOT.search(path.absolute().as_posix())
            if m:
                return {"hub_commit": m["rev"]}
            if path.is_file():
                return {"sha256": self.sha.sha256(path)}
            commit = local_dir_commit(path)
            if commit:
                return {"hub_commit": commit}
            try:
                return {"sha256_tree": _tree(path, self.sha)}
            except FileNotFoundError as e:
                self.problems[f"{key}={value}"] = str(e)
                return value
        if hub and HUB_ID.match(value) and not value.startswith((".", "/", "~")):
            commit = self.hub_commit(value, revision)
            if commit:
                return {"hub_commit": commit}
            self.problems[f"{key}={value}"] = (
                f"hub revision {revision or 'main'} not resolved to a commit (not in the hub cache "
                f"{hub_cache_dir()}, hub offline or unreachable): download it (`hf download {value}`), "
                f"set model.revision=<40-hex commit>, or point {key} at a local snapshot"
            )
            return value
        if "/" in value or path.suffix:
            self.problems[f"{key}={value}"] = "not found"
        return value  # tiny, full-random, ...: a name, not a location

    def dataset(self, data: dict) -> dict:
        root = data.get("root")
        if root in (None, ""):
            return data
        memo = ("data", canonical_key(data))
        if memo not in self._memo:
            self._memo[memo] = self._dataset(data, Path(str(root)).expanduser())
        return self._memo[memo]

    def _dataset(self, data: dict, root: Path) -> dict:
        name = str(data.get("name"))
        try:
            if not root.is_dir():
                raise FileNotFoundError(f"{root}: not a folder")
            if name == "kitti":
                content = {s: _kitti_split(root, data, s, self.sha) for s in ("train", "test")}
            elif name == "nuscenes":
                tables = _nuscenes_tables(root, data, self.sha)
                content = {"train": tables, "test": tables}
            else:
                tree = _tree(root, self.sha)
                content = {"train": tree, "test": tree}
        except (OSError, FileNotFoundError) as e:
            self.problems[f"data.root={root} (data={name})"] = str(e)
            return data
        out = {k: copy.deepcopy(v) for k, v in data.items() if k != "root"}
        for split, d in content.items():
            out[split] = {**(out.get(split) or {}), "content": d}
        return out

    # -- a whole config
    def apply(self, cfg: dict, policy: dict | None, keep: Iterable[str] = ()) -> dict:
        """A copy of `cfg` with the keys `policy` (benchmark.stage_hash.content_identity) names
        replaced by their content; values in `keep` (foundation parts) stay as they are."""
        policy = policy or {}
        if self.legacy or not policy:
            return cfg
        keep = set(keep)
        hub = set(policy.get("hub") or [])
        out = cfg
        revision = _get(cfg, "model.revision")
        for key in list(policy.get("weights") or []) + list(hub):
            value = _get(cfg, key)
            if not isinstance(value, str) or value in keep:
                continue
            new = self.weights(key, value, key in hub, revision if key in hub else None)
            if new is not value:
                out = _set(out, key, new)
        dkey = policy.get("dataset")
        if dkey and isinstance(_get(out, dkey), dict):
            new = self.dataset(_get(out, dkey))
            if new is not _get(out, dkey):
                out = _set(out, dkey, new)
        self.sha.save()
        return out

    def problem_lines(self) -> list[str]:
        return [f"{k}: content unknown ({why})" for k, why in self.problems.items()]


def canonical_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(cfg: dict, dotted: str, value: Any) -> dict:
    """A copy of `cfg` (copied along the key's path only) with `dotted` set."""
    parts = dotted.split(".")
    out = dict(cfg)
    node = out
    for part in parts[:-1]:
        node[part] = dict(node[part])
        node = node[part]
    node[parts[-1]] = value
    return out
