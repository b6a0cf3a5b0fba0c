"""lsa-bench weights fetch [--to DIR] [--only NAME,..] [--sources FILE]

Downloads every weight the paper profile reads from its official source (configs/weights.yaml):
the release files (StyleGAN-V's I3D, torch-fidelity's Inception, ultralytics' YOLO11x, detrex's
DN-DETR) over HTTP, resuming a partial download (`NAME.part`, an HTTP Range request) after a cut
connection or an interrupted command, with a progress bar; and the hub snapshots (SVD-xt, DINOv2)
through huggingface_hub's snapshot_download, pinned to a revision. Every file's sha256 is checked
against configs/weights.yaml or, where that has none, against the one recorded on the first download
into DIR (trust on first use; DIR/weights.lock.json). DIR (default $LSA_BENCH_WEIGHTS, else
./weights) ends up with the layout configs/benchmark/paper.yaml reads. Files already there and
verified are not downloaded again. Exit status 2 on a checksum mismatch, a gated repo without
access or an unreachable source (each one line naming the file, the URL, what was expected and found).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data.atomic import atomic_path
from data.cache import sha256_file
from data.cli import InputError, UserError, command

log = logging.getLogger(__name__)
LOCK = "weights.lock.json"
CHUNK = 1 << 20
RETRIES = 5  # attempts per file; each resumes where the last one stopped


class ChecksumMismatch(InputError):
    """A downloaded file's sha256 is not the expected one (the file is kept aside as NAME.bad)."""


class FetchFailed(UserError):
    """A source could not be reached or refused the download."""


@dataclass
class FileSource:
    name: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None


def default_sources() -> Path:
    import configs

    return Path(configs.__file__).parent / "weights.yaml"


def load_sources(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--sources {path}: no such file")
    spec = yaml.safe_load(path.read_text()) or {}
    return {"files": spec.get("files") or {}, "snapshots": spec.get("snapshots") or {}}


# ------------------------------------------------------------------------------------- the lock


def read_lock(folder: Path) -> dict:
    path = folder / LOCK
    return json.loads(path.read_text()) if path.is_file() else {"files": {}, "snapshots": {}}


def write_lock(folder: Path, lock: dict) -> None:
    with atomic_path(folder / LOCK) as tmp:
        Path(tmp).write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------- HTTP downloads


def download(url: str, dest: Path, *, retries: int = RETRIES, timeout: float = 30.0) -> None:
    """`url` -> `dest`, through `dest.part`: a present .part is resumed with a Range request (a server
    that ignores Range restarts it); a cut connection is retried, resuming, up to `retries` times."""
    import requests
    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    last = None
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as r:
                if r.status_code == 416 and have:  # the .part is already complete
                    part.replace(dest)
                    return
                if r.status_code not in (200, 206):
                    raise FetchFailed(f"{dest.name}: {url} answered HTTP {r.status_code} {r.reason}")
                if r.status_code == 200 and have:
                    log.info("%s: the server ignored the Range request; starting over", dest.name)
                    have = 0
                total = r.headers.get("Content-Length")
                total = have + int(total) if total is not None else None
                with (
                    open(part, "ab" if have else "wb") as f,
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar,
                ):
                    for block in r.iter_content(CHUNK):
                        f.write(block)
                        bar.update(len(block))
            if total is not None and part.stat().st_size != total:
                raise requests.ConnectionError(f"got {part.stat().st_size} of {total} bytes")
            part.replace(dest)
            return
        except FetchFailed:
            raise
        except (requests.RequestException, OSError) as e:
            last = e
            got = part.stat().st_size if part.exists() else 0
            log.warning("%s: attempt %d/%d stopped at %d bytes (%s); resuming", dest.name, attempt, retries, got, e)
            time.sleep(min(2.0, 0.1 * attempt))
    raise FetchFailed(
        f"{dest.name}: {url} could not be downloaded after {retries} attempts ({type(last).__name__}: {last}); "
        f"the partial file {part} is kept and the next fetch resumes it"
    )


def fetch_file(src: FileSource, folder: Path, lock: dict) -> Path:
    """One release file into `folder`, verified; returns its path."""
    dest = folder / src.name
    recorded = (lock["files"].get(src.name) or {}).get("sha256")
    expected = src.sha256 or recorded
    if dest.is_file():
        digest = sha256_file(dest)
        if expected is None or digest == expected:
            _record(lock, src, digest, "config" if src.sha256 else "first use")
            _check_prefix(src, dest, digest)
            log.info("%s: present, sha256 %s", src.name, digest[:16])
            return dest
        log.warning(
            "%s: present but its sha256 %s is not the expected %s; downloading again", src.name, digest, expected
        )
        dest.unlink()
    download(src.url, dest)
    digest = sha256_file(dest)
    if expected is not None and digest != expected:
        bad = dest.with_name(dest.name + ".bad")
        dest.replace(bad)
        origin = "configs/weights.yaml" if src.sha256 else f"{LOCK} (recorded at the first download)"
        raise ChecksumMismatch(
            f"{src.name}: {src.url} gave a file with sha256 {digest}, expected {expected} ({origin}); kept as {bad}"
        )
    _check_prefix(src, dest, digest)
    _record(lock, src, digest, "config" if src.sha256 else "first use")
    log.info("%s: downloaded, sha256 %s", src.name, digest)
    return dest


def _check_prefix(src: FileSource, dest: Path, digest: str) -> None:
    if src.sha256_prefix and not digest.startswith(src.sha256_prefix):
        bad = dest.with_name(dest.name + ".bad")
        dest.replace(bad)
        raise ChecksumMismatch(
            f"{src.name}: sha256 {digest} does not start with {src.sha256_prefix} (the prefix its name carries, "
            f"torch.hub's convention); kept as {bad}"
        )


def _record(lock: dict, src: FileSource, digest: str, trust: str) -> None:
    lock["files"][src.name] = {"url": src.url, "sha256": digest, "verified_by": trust}


# -------------------------------------------------------------------------------- hub snapshots


class Hub:
    """The hub calls of a fetch (tests replace `HUB` with a stub)."""

    def resolve(self, repo: str, revision: str | None) -> str:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo, revision=revision or "main").sha

    def snapshot(self, repo: str, revision: str, local_dir: Path, allow_patterns) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, local_dir=str(local_dir), allow_patterns=allow_patterns))


HUB = Hub()


def fetch_snapshot(name: str, spec: dict, folder: Path, lock: dict) -> Path:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    repo = spec["repo"]
    recorded = (lock["snapshots"].get(name) or {}).get("revision")
    try:
        revision = spec.get("revision") or recorded or HUB.resolve(repo, None)
        path = HUB.snapshot(repo, revision, folder / name, spec.get("allow_patterns"))
    except GatedRepoError as e:
        raise FetchFailed(
            f"{name}: {repo} is gated: accept its licence at https://huggingface.co/{repo} with your account, "
            f"then set HF_TOKEN to a token of that account (or run `hf auth login`) and fetch again"
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise FetchFailed(f"{name}: {repo}: {type(e).__name__} (revision {spec.get('revision') or recorded})") from e
    except Exception as e:  # no route, DNS, proxy, timeout (httpx errors are not OSErrors)
        raise FetchFailed(
            f"{name}: the hub could not be reached for {repo} ({type(e).__name__}: {str(e)[:200]}); on a machine "
            f"with access: `hf download {repo} --local-dir {folder / name}`"
        ) from e
    lock["snapshots"][name] = {"repo": repo, "revision": revision, "key": spec.get("key")}
    log.info("%s: %s at %s in %s", name, repo, revision, path)
    return Path(path)


# ---------------------------------------------------------------------------------------- fetch


def fetch_all(folder: str | Path, sources: dict, only: list[str] | None = None) -> dict[str, Path]:
    """Every file and snapshot of `sources` (or those named in `only`) into `folder`; the lock is
    written after each item, so a verified item survives a later failure."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    names = list(sources["files"]) + list(sources["snapshots"])
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise UserError(f"--only {','.join(unknown)}: unknown; the sources name {', '.join(names)}")
    lock, out = read_lock(folder), {}
    for name, spec in sources["files"].items():
        if only and name not in only:
            continue
        src = FileSource(name, spec["url"], spec.get("sha256"), spec.get("sha256_prefix"))
        out[name] = fetch_file(src, folder, lock)
        write_lock(folder, lock)
    for name, spec in sources["snapshots"].items():
        if only and name not in only:
            continue
        out[name] = fetch_snapshot(name, spec, folder, lock)
        write_lock(folder, lock)
    return out


def run_line(folder: Path, sources: dict) -> str:
    """The environment and overrides that make the paper profile read what was fetched."""
    keys = " ".join(f"{s['key']}={folder / n}" for n, s in sources["snapshots"].items() if s.get("key"))
    return f"LSA_BENCH_WEIGHTS={folder} python -m benchmark.run table=I profile=paper {keys}".strip()


@command
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="lsa-bench weights", description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download and verify every weight of the paper profile")
    fetch.add_argument("--to", default=os.environ.get("LSA_BENCH_WEIGHTS") or "weights", help="the weights folder")
    fetch.add_argument("--only", default=None, help="comma-separated names from the sources file")
    fetch.add_argument("--sources", default=str(default_sources()), help="URLs, sha256 and hub repos (YAML)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    sources = load_sources(args.sources)
    folder = Path(args.to).expanduser().resolve()
    fetch_all(folder, sources, args.only.split(",") if args.only else None)
    print(f"weights in {folder} (checksums and revisions: {folder / LOCK})")
    print(f"run with: {run_line(folder, sources)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
