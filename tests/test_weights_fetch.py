"""`lsa-bench weights fetch` without any network: a loopback HTTP server (127.0.0.1, started here,
stopped at the end of the module and by a timer in any case) serves stand-in files, one of them
with a wrong checksum and one cut mid-file; the hub client is a stub."""

from __future__ import annotations

import hashlib
import http.server
import threading
import types

import pytest
import yaml

from benchmark import weights_fetch
from benchmark.weights_fetch import ChecksumMismatch, FetchFailed, fetch_all, load_sources

GOOD = bytes(range(256)) * 4096  # 1 MiB
OTHER = b"x" * 300_000


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /<name>: the bytes of FILES[name], honouring `Range: bytes=N-`. /cut/<name> sends half of
    the file and closes the connection, the first time only."""

    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    cut_done: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        rng = self.headers.get("Range")
        self.log.append((self.path, rng))
        cut = self.path.startswith("/cut/")
        name = self.path.removeprefix("/cut/").lstrip("/")
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut and name not in self.cut_done:
            self.cut_done.add(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    Handler.files = {"good.pt": GOOD, "other.pt": OTHER, "big.pt": GOOD * 2}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(120, httpd.shutdown)  # bounded: stops by itself even if teardown never runs
    stopper.daemon = True
    stopper.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    stopper.cancel()
    httpd.shutdown()
    httpd.server_close()


def sources(tmp_path, files: dict, snapshots: dict | None = None):
    path = tmp_path / "weights.yaml"
    path.write_text(yaml.safe_dump({"files": files, "snapshots": snapshots or {}}, sort_keys=False))
    return load_sources(path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_success_records_the_checksum_and_verifies_it_next_time(server, tmp_path):
    src = sources(
        tmp_path,
        {
            "good.pt": {"url": f"{server}/good.pt", "sha256": sha(GOOD)},  # pinned in the sources file
            "other.pt": {"url": f"{server}/other.pt", "sha256": None},  # trust on first use
        },
    )
    out = fetch_all(tmp_path / "w", src)
    assert out["good.pt"].read_bytes() == GOOD and out["other.pt"].read_bytes() == OTHER
    lock = weights_fetch.read_lock(tmp_path / "w")
    assert lock["files"]["other.pt"] == {"url": f"{server}/other.pt", "sha256": sha(OTHER), "verified_by": "first use"}
    assert lock["files"]["good.pt"]["verified_by"] == "config"
    Handler.log.clear()
    fetch_all(tmp_path / "w", src)  # present and verified: nothing downloaded again
    assert Handler.log == []
    # a file changed on disk since: its recorded checksum no longer fits, so it is downloaded again
    (tmp_path / "w" / "other.pt").write_bytes(b"changed")
    fetch_all(tmp_path / "w", src)
    assert (tmp_path / "w" / "other.pt").read_bytes() == OTHER and [p for p, _ in Handler.log] == ["/other.pt"]


def test_checksum_mismatch_is_one_line_and_the_file_is_set_aside(server, tmp_path):
    src = sources(tmp_path, {"good.pt": {"url": f"{server}/other.pt", "sha256": sha(GOOD)}})
    with pytest.raises(ChecksumMismatch) as e:
        fetch_all(tmp_path / "w", src)
    msg = str(e.value)
    assert "\n" not in msg and f"sha256 {sha(OTHER)}" in msg and f"expected {sha(GOOD)}" in msg
    assert not (tmp_path / "w" / "good.pt").exists() and (tmp_path / "w" / "good.pt.bad").read_bytes() == OTHER
    # the prefix a torch.hub-style name carries is checked too
    src = sources(tmp_path, {"x-12345678.pth": {"url": f"{server}/good.pt", "sha256_prefix": "12345678"}})
    with pytest.raises(ChecksumMismatch, match="does not start with 12345678"):
        fetch_all(tmp_path / "w2", src)
    # through the command: exit 2
    assert weights_fetch.main(["fetch", "--to", str(tmp_path / "w3"), "--sources", str(tmp_path / "weights.yaml")]) == 2


def test_a_cut_connection_is_resumed_with_a_range_request(server, tmp_path):
    src = sources(tmp_path, {"big.pt": {"url": f"{server}/cut/big.pt", "sha256": sha(GOOD * 2)}})
    Handler.log.clear()
    out = fetch_all(tmp_path / "w", src)
    assert out["big.pt"].read_bytes() == GOOD * 2
    assert Handler.log == [("/cut/big.pt", None), ("/cut/big.pt", f"bytes={len(GOOD)}-")]
    assert not (tmp_path / "w" / "big.pt.part").exists()


def test_an_interrupted_fetch_resumes_its_part_file(server, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "good.pt.part").write_bytes(GOOD[:1000])  # left by an interrupted command
    src = sources(tmp_path, {"good.pt": {"url": f"{server}/good.pt", "sha256": sha(GOOD)}})
    Handler.log.clear()
    fetch_all(tmp_path / "w", src)
    assert Handler.log == [("/good.pt", "bytes=1000-")]
    assert (tmp_path / "w" / "good.pt").read_bytes() == GOOD


def test_unreachable_source_is_one_line(tmp_path):
    src = sources(tmp_path, {"a.pt": {"url": "http://127.0.0.1:9/a.pt"}})  # the discard port: refused
    with pytest.raises(FetchFailed, match="could not be downloaded after") as e:
        fetch_all(tmp_path / "w", src)
    assert "\n" not in str(e.value)


class FakeHub:
    def __init__(self, gated=False, error=None):
        self.calls, self.gated, self.error = [], gated, error

    def resolve(self, repo, revision):
        return "c0ffee" + "0" * 34

    def snapshot(self, repo, revision, local_dir, allow_patterns):
        if self.error:
            raise self.error
        if self.gated:
            from huggingface_hub.errors import GatedRepoError

            raise GatedRepoError("gated", response=types.SimpleNamespace(headers={}, status_code=403, request=None))
        self.calls.append((repo, revision, allow_patterns))
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "model_index.json").write_text("{}")
        return local_dir


def test_hub_snapshots_pinned_and_recorded(tmp_path, monkeypatch, capsys):
    hub = FakeHub()
    monkeypatch.setattr(weights_fetch, "HUB", hub)
    snaps = {
        "svd": {"repo": "org/svd", "key": "model.svd", "revision": None, "allow_patterns": ["model_index.json"]},
        "dino": {"repo": "org/dino", "key": "model.dino", "revision": "abc123"},
    }
    src_file = tmp_path / "weights.yaml"
    sources(tmp_path, {}, snaps)
    assert weights_fetch.main(["fetch", "--to", str(tmp_path / "w"), "--sources", str(src_file)]) == 0
    resolved = "c0ffee" + "0" * 34
    assert hub.calls == [("org/svd", resolved, ["model_index.json"]), ("org/dino", "abc123", None)]
    lock = weights_fetch.read_lock(tmp_path / "w")
    assert lock["snapshots"]["svd"]["revision"] == resolved  # the next fetch reuses this commit
    out = capsys.readouterr().out
    assert f"model.svd={tmp_path / 'w' / 'svd'}" in out and f"LSA_BENCH_WEIGHTS={tmp_path / 'w'}" in out
    monkeypatch.setattr(weights_fetch, "HUB", FakeHub(gated=True))
    assert weights_fetch.main(["fetch", "--to", str(tmp_path / "w2"), "--sources", str(src_file)]) == 2
    err = capsys.readouterr().err
    assert "accept its licence at https://huggingface.co/org/svd" in err and "HF_TOKEN" in err
    monkeypatch.setattr(weights_fetch, "HUB", FakeHub(error=ConnectionError("no route to host")))
    assert weights_fetch.main(["fetch", "--to", str(tmp_path / "w3"), "--sources", str(src_file)]) == 2
    err = capsys.readouterr().err
    assert (
        "could not be reached for org/svd" in err
        and f"hf download org/svd --local-dir {tmp_path / 'w3' / 'svd'}" in err
    )


def test_the_shipped_sources_name_every_weight_the_paper_profile_reads():
    """configs/weights.yaml writes the file names configs/benchmark/paper.yaml reads."""
    import re

    from benchmark.config import config_root

    src = load_sources(weights_fetch.default_sources())
    paper = (config_root() / "benchmark" / "paper.yaml").read_text()
    read = set(re.findall(r"LSA_BENCH_WEIGHTS,weights}/([\w.-]+)", paper))
    assert read and read == set(src["files"])
    assert {s["key"] for s in src["snapshots"].values()} == {"model.svd", "model.dino"}
    assert all(s["url"].startswith("https://") for s in src["files"].values())
