"""Stage identity by content, not location (benchmark/identity.py): the paper profile's stage hashes
survive moving the dataset and weights folders and switching a hub id to a local snapshot of the same
commit, and change when one byte of a weight or label file changes; the smoke and mini profiles'
hashes are those of the location-based hashing (the committed smoke tables' stores stay valid)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

import benchmark.identity as identity
from ablations.registry import load_table
from benchmark.config import HydraResolver
from benchmark.identity import ContentIdentity, Sha256Cache
from benchmark.stages import expand

ROOT = Path(__file__).resolve().parents[1]
REAL_LABELS = ROOT.parent / "shared" / "data" / "kitti_tracking" / "training" / "label_02"
ROWS = ["kitti_ctrlv_1to0", "kitti_lsa"]  # every stage kind; Ctrl-V trains on the fine-tuned row
SVD = "stabilityai/stable-video-diffusion-img2vid-xt"
DINO = "facebook/dinov2-base"
WEIGHTS = ("i3d_torchscript.pt", "weights-inception-2015-12-05-6726825d.pth", "dn_detr_r50_50ep.pth", "yolo11x.pt")


# ------------------------------------------------------------------------------------ stand-ins
def make_kitti(root: Path) -> Path:
    """KITTI Tracking's layout: training/label_02/SSSS.txt and training/image_02/SSSS/NNNNNN.png for the
    paper's scenes 0000-0020 (the real label files where the shared data folder has them)."""
    for i in range(21):
        scene = f"{i:04d}"
        labels = root / "training" / "label_02"
        labels.mkdir(parents=True, exist_ok=True)
        real = REAL_LABELS / f"{scene}.txt"
        if real.is_file():
            shutil.copy2(real, labels / f"{scene}.txt")
        else:
            (labels / f"{scene}.txt").write_text(f"0 1 Car 0 0 -1 {i} 10 50 60 1.5 1.6 3.9 1 1 10 0\n")
        images = root / "training" / "image_02" / scene
        images.mkdir(parents=True)
        for f in range(3):
            (images / f"{f:06d}.png").write_bytes(b"png stand-in")
    return root


def make_weights(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(WEIGHTS):
        (folder / name).write_bytes(bytes(range(256)) * (i + 3))
    return folder


def make_hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> tuple[str, Path]:
    """The hub cache layout huggingface_hub writes: refs/main -> the commit, snapshots/<commit>/<file>
    -> ../../blobs/<sha256>. Returns (commit, snapshot folder)."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    for name, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    return commit, snap


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Stand-in KITTI, weights folder and hub cache; hub offline (the cache answers)."""
    cache = tmp_path / "hub"
    svd = make_hub_cache(cache, SVD, {"model_index.json": b"{}", "unet/config.json": b"{}"})
    dino = make_hub_cache(cache, DINO, {"config.json": b'{"model_type": "dinov2"}'})
    monkeypatch.setattr(identity, "hub_cache_dir", lambda: cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSA_BENCH_CACHE", str(tmp_path / "bench-cache"))
    monkeypatch.delenv("LSA_NUSCENES_ROOT", raising=False)
    kitti = make_kitti(tmp_path / "a" / "kitti")
    weights = make_weights(tmp_path / "a" / "weights")
    return {"tmp": tmp_path, "kitti": kitti, "weights": weights, "svd": svd, "dino": dino}


def graph(monkeypatch, kitti: Path, weights: Path, overrides=(), table="I", rows=ROWS, content=None):
    monkeypatch.setenv("LSA_KITTI_ROOT", str(kitti))
    monkeypatch.setenv("LSA_BENCH_WEIGHTS", str(weights))
    return expand(load_table(table).select(rows), HydraResolver("paper", list(overrides)), content)


def kinds(g) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in g.order():
        out.setdefault(s.kind, []).append(s.hash)
    return out


def flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a changed file has a new mtime


# ------------------------------------------------------------------------------------ the paper profile
def test_moving_folders_and_hub_id_to_local_snapshot_keep_every_hash(world, monkeypatch):
    a = graph(monkeypatch, world["kitti"], world["weights"])
    assert a.unknown_content == []
    assert {"testset", "train", "ctrlv_bbox", "ctrlv_box2video", "generate", "evaluate"} <= set(kinds(a))
    for s in a.order():  # no location in what is hashed
        text = repr(s.config)
        assert str(world["tmp"]) not in text and SVD not in text, (s.kind, text[:300])

    moved = world["tmp"] / "b" / "elsewhere"
    moved.mkdir(parents=True)
    kitti = shutil.move(world["kitti"], moved / "KITTI-tracking")
    weights = shutil.move(world["weights"], moved / "w")
    b = graph(
        monkeypatch,
        Path(kitti),
        Path(weights),
        [f"model.svd={world['svd'][1]}", f"model.dino={world['dino'][1]}"],
    )
    assert b.unknown_content == []
    assert b.add_order == a.add_order

    # the old, location-based hashes (STAGE_SCHEMA 1) did change: what this fixes
    old_a = graph(monkeypatch, moved / "KITTI-tracking", moved / "w", content=ContentIdentity(legacy=True))
    old_b = graph(monkeypatch, world["kitti"], moved / "w", content=ContentIdentity(legacy=True))
    assert set(old_a.add_order).isdisjoint(a.add_order)
    assert kinds(old_a)["testset"] != kinds(old_b)["testset"]


def test_one_changed_byte_changes_the_stages_that_depend_on_the_file(world, monkeypatch):
    a = kinds(graph(monkeypatch, world["kitti"], world["weights"]))

    flip_byte(world["weights"] / "dn_detr_r50_50ep.pth")  # the detector Table I scores with
    b = kinds(graph(monkeypatch, world["kitti"], world["weights"]))
    assert set(b["evaluate"]).isdisjoint(a["evaluate"])
    assert {k: v for k, v in b.items() if k != "evaluate"} == {k: v for k, v in a.items() if k != "evaluate"}

    flip_byte(world["weights"] / "i3d_torchscript.pt")  # FVD's I3D: every evaluation again
    c = kinds(graph(monkeypatch, world["kitti"], world["weights"]))
    assert set(c["evaluate"]).isdisjoint(b["evaluate"]) and c["train"] == a["train"]

    flip_byte(world["kitti"] / "training" / "label_02" / "0003.txt", at=5)  # a training scene's labels
    d = kinds(graph(monkeypatch, world["kitti"], world["weights"]))
    assert d["testset"] == a["testset"]  # the test split (0019, 0020) is unchanged
    assert set(d["train"]).isdisjoint(a["train"])

    (world["kitti"] / "training" / "image_02" / "0020" / "000003.png").write_bytes(b"one more test frame")
    e = kinds(graph(monkeypatch, world["kitti"], world["weights"]))
    assert e["testset"] != d["testset"] and e["train"] == d["train"]


def test_hub_revision_other_commit_changes_the_hash_and_unknown_content_stops_a_real_run(world, monkeypatch):
    a = kinds(graph(monkeypatch, world["kitti"], world["weights"]))
    other = "f" * 40  # a pinned commit needs no cache or hub to be resolved
    b = kinds(graph(monkeypatch, world["kitti"], world["weights"], [f"model.revision={other}"]))
    assert set(b["train"]).isdisjoint(a["train"]) and b["testset"] == a["testset"]

    # a hub id not in the cache while offline: its content is unknown and named
    g = graph(monkeypatch, world["kitti"], world["weights"], ["model.dino=facebook/dinov2-large"])
    assert any(line.startswith("model.dino=facebook/dinov2-large: content unknown") for line in g.unknown_content)

    # ... and a real run refuses to start: the preflight's report gets one line per such input
    from benchmark.preflight import PreflightFailed, Report, refuse
    from benchmark.run_table import content_problems

    report = Report()
    content_problems(g, report)
    assert [ln.split("  [rows")[0] for ln in report.lines()] == [
        "model.dino = facebook/dinov2-large: expected content the stage hash can name (docs/benchmark.md, "
        "'Inputs by content'); found " + g.unknown_content[0].split("content unknown (", 1)[1][:-1]
    ]
    with pytest.raises(PreflightFailed, match="model.dino = facebook/dinov2-large"):
        refuse("I", report)


# ------------------------------------------------------------------------------------ the pieces
def test_sha256_is_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x" * 1000)
    first = Sha256Cache(tmp_path / "c.json")
    assert first.sha256(f) == hashlib.sha256(b"x" * 1000).hexdigest() and first.hashed == 1
    first.save()
    again = Sha256Cache(tmp_path / "c.json")  # another process: read from the cache file
    assert again.sha256(f) == first.sha256(f) and again.hashed == 0
    flip_byte(f)
    assert again.sha256(f) != first.sha256(tmp_path / "c.json") and again.hashed == 1
    assert again.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_local_dir_download_is_its_commit_until_a_file_changes(tmp_path):
    """`hf download --local-dir` records each file's commit in .cache/huggingface/download/."""
    folder = tmp_path / "svd-xt"
    commit = "a" * 40
    for rel in ("model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"weights of " + rel.encode())
        meta = folder / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"{commit}\netag\n{time.time() + 5}\n")
    ci = ContentIdentity(Sha256Cache(tmp_path / "c.json"))
    assert ci.weights("model.svd", str(folder), hub=True) == {"hub_commit": commit}
    f = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    f.write_bytes(b"edited")
    os.utime(f, (time.time() + 60, time.time() + 60))
    changed = ContentIdentity(Sha256Cache(tmp_path / "c.json")).weights("model.svd", str(folder), hub=True)
    assert set(changed) == {"sha256_tree"}  # no longer what the commit says: by its files


def test_names_that_are_not_locations_stay_as_they_are(tmp_path):
    ci = ContentIdentity(Sha256Cache(tmp_path / "c.json"), hub_commit=lambda repo, rev: None)
    assert ci.weights("model.svd", "tiny", hub=True) == "tiny"
    assert ci.weights("metrics.fvd.weights", None, hub=False) is None
    assert ci.problems == {}
    assert ci.weights("metrics.fvd.weights", str(tmp_path / "gone.pt"), hub=False) == str(tmp_path / "gone.pt")
    assert ci.problem_lines() == [f"metrics.fvd.weights={tmp_path / 'gone.pt'}: content unknown (not found)"]


@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_smoke_and_mini_hashes_are_the_location_based_ones(profile, monkeypatch):
    """Their configs name no location (tiny models, synthetic data, foundation parts named by their
    own hash), so the stores and committed tables made before content identity stay valid."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolver = HydraResolver(profile)
    new = expand(load_table("III"), resolver)
    old = expand(load_table("III"), resolver, ContentIdentity(legacy=True))
    assert new.add_order == old.add_order and new.unknown_content == []


# ------------------------------------------------------------------------------------ an old store
def test_rehash_carries_an_old_store_over_after_the_dataset_moved(world, monkeypatch, capsys):
    """A store made with location-based hashes: `benchmark.rehash --apply` (the old KITTI root given
    as was.<key>) renames every stage to its content hash; the stages then load back by hash, match
    their manifests, and the table's graph finds them all cached."""
    from benchmark import rehash
    from benchmark.job import load_stage
    from benchmark.store import Store

    store = Store(world["tmp"] / "runs")
    old = graph(monkeypatch, world["kitti"], world["weights"], content=ContentIdentity(legacy=True))
    for s in old.order():
        store.begin(s)
        (store.dir(s.hash) / "out.bin").write_bytes(s.hash.encode())
        if s.kind != "generate":  # unfinished stages (a partly trained one) are carried too
            store.commit(s, {})
    moved = Path(shutil.move(world["kitti"], world["tmp"] / "kitti-moved"))
    monkeypatch.setenv("LSA_KITTI_ROOT", str(moved))
    monkeypatch.setenv("LSA_BENCH_WEIGHTS", str(world["weights"]))
    argv = ["table=I", "rows=" + ",".join(ROWS), "profile=paper", f"store={store.root}"]
    assert rehash.main(argv + [f"was.benchmark.data_roots.kitti={world['kitti']}"]) == 0
    dry = capsys.readouterr().out
    n_gen = len(kinds(old)["generate"])
    assert dry.count(" finished") == len(old.order()) - n_gen and dry.count(" partial") == n_gen
    assert all(store.dir(s.hash).is_dir() for s in old.order())  # printing moves nothing

    assert rehash.main(argv + [f"was.benchmark.data_roots.kitti={world['kitti']}", "--apply"]) == 0
    assert capsys.readouterr().out.count("moved") == len(old.order())
    new = graph(monkeypatch, moved, world["weights"])
    assert set(new.stages).isdisjoint(old.stages)
    for s in new.order():
        assert store.dir(s.hash).is_dir()
        assert load_stage(store, s.hash).hash == s.hash  # the job's own check: the config hashes to the name
        assert store.verify(s.hash) == ([] if s.kind != "generate" else None)
        assert (store.dir(s.hash) / "out.bin").is_file()
    assert [s.kind for s in new.pending(store.is_done)] == ["generate"] * n_gen
