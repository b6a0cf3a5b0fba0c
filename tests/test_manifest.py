"""Manifests of finished stages (benchmark/manifest.py): written before DONE, checked before a
finished stage is reused (a damaged one is set aside and recomputed, naming the damaged file), and
by `python -m benchmark.status --verify`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakes import FakeRunner
from PIL import Image

from benchmark import manifest
from benchmark.config import HydraResolver
from benchmark.run_table import run_table
from benchmark.store import DONE, Store


@pytest.fixture(scope="module")
def smoke():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return HydraResolver("smoke")


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "stage"
    (d / "frames" / "clip_0000").mkdir(parents=True)
    for i in range(3):
        (d / "frames" / "clip_0000" / f"{i:06d}.raw").write_bytes(bytes([i]) * 100)
    (d / "result.json").write_text("{}\n")
    return d


def test_verify_names_missing_extra_and_changed_files(tmp_path):
    d = _folder(tmp_path)
    assert manifest.verify(d) is None  # no manifest yet: not checkable
    manifest.write_manifest(d)
    assert manifest.verify(d) == []
    (d / ".frames.tmp123").mkdir()  # a killed writer's temp folder: never data
    (d / "frames" / ".000003.raw.tmp").write_bytes(b"x")
    (d / DONE).write_text("now\n")
    (d / "slurm.json").write_text("{}")
    assert manifest.verify(d) == []
    (d / "frames" / "clip_0000" / "000001.raw").unlink()
    (d / "frames" / "clip_0000" / "000002.raw").write_bytes(b"\x07" * 100)  # same size, other bytes
    (d / "result.json").write_text('{"a": 1}\n')
    (d / "frames" / "clip_0001").mkdir()
    (d / "frames" / "clip_0001" / "000000.raw").write_bytes(b"x")
    assert manifest.verify(d) == [
        "missing frames/clip_0000/000001.raw",
        "extra frames/clip_0001/000000.raw",
        "changed frames/clip_0000/000002.raw (content differs from its recorded hash)",
        "changed result.json (size 9 bytes, recorded 3)",
    ]
    assert manifest.verify(d, hashes=False) == [  # the cheap mode: names and sizes only
        "missing frames/clip_0000/000001.raw",
        "extra frames/clip_0001/000000.raw",
        "changed result.json (size 9 bytes, recorded 3)",
    ]


def test_large_files_are_hashed_whole_and_version_1_ends_hashes_still_check(tmp_path, monkeypatch):
    """Version 2 hashes every file whole: a change in the middle of a large file is found. A version 1
    manifest's `ends-sha256` entry (size, first and last MiB) is still checked its way."""
    monkeypatch.setattr(manifest, "LARGE", 4096)
    monkeypatch.setattr(manifest, "END_BYTES", 1024)
    d = tmp_path / "s"
    d.mkdir()
    data = bytearray(os.urandom(10_000))
    (d / "unet.safetensors").write_bytes(bytes(data))
    manifest.write_manifest(d)
    entry = json.loads((d / manifest.MANIFEST).read_text())["files"]["unet.safetensors"]
    assert entry["size"] == 10_000 and entry["hash"].startswith("sha256:")
    data[5000] ^= 0xFF  # the middle
    (d / "unet.safetensors").write_bytes(bytes(data))
    assert manifest.verify(d) == ["changed unet.safetensors (content differs from its recorded hash)"]

    old = {"size": 10_000, "hash": manifest.file_hash(d / "unet.safetensors", 10_000, kind="ends-sha256")}
    (d / manifest.MANIFEST).write_text(json.dumps({"version": 1, "files": {"unet.safetensors": old}}))
    data[5001] ^= 0xFF  # the middle: not read by a version 1 hash (its documented limit)
    (d / "unet.safetensors").write_bytes(bytes(data))
    assert manifest.verify(d) == []
    data[-1] ^= 0xFF  # the end: found
    (d / "unet.safetensors").write_bytes(bytes(data))
    assert manifest.verify(d) == ["changed unet.safetensors (content differs from its recorded hash)"]


class _Stage:
    kind, hash, deps, params, rows = "generate", "abc123", (), {}, ["r"]
    config = run_cfg = {"a": 1}


def test_commit_writes_the_manifest_before_done(tmp_path, monkeypatch):
    store, st = Store(tmp_path), _Stage()
    out = store.begin(st)
    (out / "frames").mkdir()
    Image.new("RGB", (4, 4)).save(out / "frames" / "x.png")
    order = []
    real = manifest.write_manifest
    monkeypatch.setattr(
        "benchmark.store.write_manifest", lambda d: (order.append(("manifest", (Path(d) / DONE).exists())), real(d))[1]
    )
    store.commit(st, {"frames": out / "frames"})
    assert order == [("manifest", False)]  # DONE did not exist when the manifest was written
    files = json.loads((out / manifest.MANIFEST).read_text())["files"]
    assert {"frames/x.png", "result.json", "stage.json", "stage_config.yaml", "run_config.yaml"} <= set(files)
    assert store.verify(st.hash) == []


def _damage_a_frame(store: Path, run) -> tuple[str, str]:
    gen = next(s for s in run.graph.order() if s.kind == "generate")
    frame = sorted((store / gen.hash / "frames").rglob("*.png"))[1]
    frame.unlink()
    return gen.hash, frame.relative_to(store / gen.hash).as_posix()


def test_damaged_finished_stage_is_recomputed_not_trusted(smoke, tmp_path):
    store = tmp_path / "runs"
    kw = dict(store=store, results=tmp_path / "res", rows=["global"], figures=False)
    first = run_table("III", smoke, FakeRunner(), echo=lambda m: None, **kw)
    gen_hash, rel = _damage_a_frame(store, first)
    said, runner = [], FakeRunner()
    second = run_table("III", smoke, runner, echo=said.append, **kw)
    downstream = [s.hash for s in first.graph.order() if s.kind == "evaluate"]  # made from it: redone too
    assert second.executed == [gen_hash, *downstream] and runner.calls["generate"] == 1
    assert sum(runner.calls.values()) == 1 + len(downstream)
    msg = next(m for m in said if "is damaged" in m)
    assert f"stage generate {gen_hash}" in msg and f"missing {rel}" in msg and "recomputed" in msg
    assert (store / gen_hash / rel).is_file() and Store(store).verify(gen_hash) == []
    assert len(list((store / ".damaged").glob(f"{gen_hash}-*"))) == 1  # kept aside, not deleted
    assert json.loads((tmp_path / "res" / "smoke-fake" / "table_III.json").read_text())


def test_the_runner_hashes_touched_files_and_status_verify_hashes_all(smoke, tmp_path, capsys):
    """Before reuse the runner hashes the files touched since they were last found intact: a
    same-size change (a write moves mtime and ctime) is found and recomputed. A change that leaves
    the metadata as it was (bit rot; simulated by recording the new signature as verified) is what
    `benchmark.status --verify`, which hashes every file, finds."""
    from benchmark.status import main

    store = tmp_path / "runs"
    kw = dict(store=store, results=tmp_path / "res", rows=["global"], figures=False)
    run = run_table("III", smoke, FakeRunner(), echo=lambda m: None, **kw)
    gen = next(s for s in run.graph.order() if s.kind == "generate")

    def flip(frame):
        data = bytearray(frame.read_bytes())
        data[-1] ^= 0xFF
        frame.write_bytes(bytes(data))

    frame = sorted((store / gen.hash / "frames").rglob("*.png"))[0]
    flip(frame)
    runner = FakeRunner()
    run_table("III", smoke, runner, echo=lambda m: None, **kw)
    assert runner.calls["generate"] == 1 and runner.calls["evaluate"] >= 1  # and what was made from it

    frame = sorted((store / gen.hash / "frames").rglob("*.png"))[0]
    rel = frame.relative_to(store / gen.hash).as_posix()
    flip(frame)
    cache = store / gen.hash / manifest.VERIFIED
    seen = json.loads(cache.read_text())
    seen[rel][:4] = manifest._signature(frame.stat())  # as if the bytes changed under the metadata
    cache.write_text(json.dumps(seen))
    runner = FakeRunner()
    run_table("III", smoke, runner, echo=lambda m: None, **kw)
    assert sum(runner.calls.values()) == 0  # what the cache cannot see
    assert main(["--verify", f"store={store}"]) == 1
    assert f"changed {rel} (content differs" in capsys.readouterr().out


def test_stage_without_manifest_is_trusted_with_a_warning(smoke, tmp_path):
    store = tmp_path / "runs"
    kw = dict(store=store, results=tmp_path / "res", rows=["global"], figures=False)
    first = run_table("III", smoke, FakeRunner(), echo=lambda m: None, **kw)
    ts = next(s for s in first.graph.order() if s.kind == "testset")
    (store / ts.hash / manifest.MANIFEST).unlink()  # as a stage finished by an older version
    said, runner = [], FakeRunner()
    run_table("III", smoke, runner, echo=said.append, **kw)
    assert sum(runner.calls.values()) == 0
    assert any(f"stage testset {ts.hash} finished before stages had manifests" in m for m in said), said


def test_status_verify_reports_damaged_stages(smoke, tmp_path, capsys):
    from benchmark.status import main

    store = tmp_path / "runs"
    run = run_table(
        "III",
        smoke,
        FakeRunner(),
        echo=lambda m: None,
        store=store,
        results=tmp_path / "res",
        rows=["global"],
        figures=False,
    )
    assert main(["--verify", f"store={store}"]) == 0
    assert f"{len(run.graph.stages)} finished stage(s) checked, 0 damaged" in capsys.readouterr().out
    gen_hash, rel = _damage_a_frame(store, run)
    assert main(["--verify", f"store={store}"]) == 1
    out = capsys.readouterr().out
    assert "2 damaged" in out and f"damaged  generate  {gen_hash}  missing {rel}" in out
    ev = next(s.hash for s in run.graph.order() if s.kind == "evaluate")  # made from it: damaged with it
    assert f"damaged  evaluate  {ev}  made from damaged stage {gen_hash}" in out
    assert main(["table=III", "rows=global", "--verify", f"store={store}"]) == 1
    out = capsys.readouterr().out
    assert f"damaged  generate  {gen_hash}" in out and f"missing {rel}" in out
    assert main(["table=III", "rows=global", f"store={store}"]) == 0  # without --verify: no check
