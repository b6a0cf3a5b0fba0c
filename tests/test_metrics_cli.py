"""`python -m metrics.evaluate` on folders of videos: the smoke profile end to end, and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.synthetic import synthetic_clip
from data.video_io import read_video, write_frames, write_video
from metrics.evaluate import evaluate, load_config, main, pair_videos
from metrics.weights import ensure_smoke_weights, resolve_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
T, H, W = 3, 64, 96


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("metrics_cache")
    ensure_smoke_weights(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """real/ and gen/ with 3 pairs: mp4 files and frame folders mixed."""
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(["clip_a", "clip_b", "clip_c"]):
        real = synthetic_clip(i, T, H, W).frames
        gen = synthetic_clip(i + 50, T, H, W).frames
        if i == 0:
            write_frames(root / "real" / name, real)
            write_frames(root / "gen" / name, gen)
        else:
            write_video(root / "real" / f"{name}.mp4", real)
            write_video(root / "gen" / f"{name}.mp4", gen)
    return root


def _run(args, capsys):
    rc = main(args + ["--quiet"])
    return rc, capsys.readouterr()


def test_ensure_smoke_weights_is_idempotent(cache):
    paths = ensure_smoke_weights(cache)
    assert set(paths) == {"i3d", "inception", "yolo"} and all(p.is_file() for p in paths.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    ensure_smoke_weights(cache)
    assert stamps == {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert not [p for p in cache.iterdir() if p.name.startswith("tmp")]  # no temp files left


def test_cli_smoke_profile_all_metrics(folders, cache, tmp_path, capsys):
    out = tmp_path / "res" / "metrics.json"
    plot = tmp_path / "res" / "curves.png"
    rc, io = _run(
        [
            "--real",
            str(folders / "real"),
            "--gen",
            str(folders / "gen"),
            "--metrics",
            "fvd,fid,det",
            "--out",
            str(out),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
            "--set",
            "fid.batch_size=8",
            "--plot",
            str(plot),
        ],
        capsys,
    )
    assert rc == 0, io.err
    res = json.loads(out.read_text())
    assert res["n_videos"] == 3 and res["num_frames"] == T and res["profile"] == "smoke"
    assert res["fvd"]["n_real"] == 3 and res["fvd"]["dim"] == 400 and res["fvd"]["value"] > 0
    assert res["fid"]["n_real"] == 3 * T and res["fid"]["dim"] == 2048 and res["fid"]["value"] > 0
    assert "centre crop" in res["fvd"]["protocol"] and "TF1 bilinear" in res["fid"]["protocol"]
    det = res["det"]
    assert det["protocol"] == "lsa" and det["n_videos"] == 3 and len(det["per_frame"]["mAP"]) == T
    assert det["n_ref_boxes"] > 0 and 0 <= det["mIoU"] <= 100
    assert all(res["timing"][m]["frames_per_s"] > 0 for m in ("fvd", "fid", "det"))
    assert plot.stat().st_size > 1000 and "N=3 videos" in io.out
    assert not [p for p in out.parent.iterdir() if p.suffix == ".json" and p != out]  # atomic write


def test_cli_ctrlv_protocol_and_squash(folders, cache, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc, io = _run(
        [
            "--real",
            str(folders / "real"),
            "--gen",
            str(folders / "gen"),
            "--metrics",
            "fvd,det",
            "--out",
            str(out),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
            "--protocol",
            "ctrlv",
            "--fvd-crop",
            "squash",
        ],
        capsys,
    )
    assert rc == 0, io.err
    res = json.loads(out.read_text())
    assert res["det"]["protocol"] == "ctrlv" and res["det"]["settings"]["class_aware"] is False
    assert "squash" in res["fvd"]["protocol"] and "fid" not in res


def test_identical_folders_score_perfectly(folders, cache):
    real, _, names = pair_videos(folders / "real", folders / "real")
    cfg = load_config("smoke", [f"cache_dir={cache}", "metrics=[fvd,det]"])
    res = evaluate(real, real, cfg, names=names, progress=False)
    assert res["fvd"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert res["det"]["mAP"] == pytest.approx(100.0) and res["det"]["mIoU"] == pytest.approx(100.0)


def test_unpaired_videos_are_named(folders, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    write_video(gen / "clip_b.mp4", synthetic_clip(0, T, H, W).frames)
    write_video(gen / "other.mp4", synthetic_clip(1, T, H, W).frames)
    rc, io = _run(
        ["--real", str(folders / "real"), "--gen", str(gen), "--out", str(tmp_path / "x.json"), "--config", "smoke"],
        capsys,
    )
    assert rc == 2
    assert "unpaired videos" in io.err and "clip_a" in io.err and "clip_c" in io.err and "other" in io.err
    assert not (tmp_path / "x.json").exists()


def test_mismatched_frame_count_and_size(tmp_path, cache, capsys):
    for sub, frames in (("real", synthetic_clip(0, T, H, W).frames), ("gen", synthetic_clip(0, T + 1, H, W).frames)):
        write_frames(tmp_path / sub / "v", frames)
    rc, io = _run(
        [
            "--real",
            str(tmp_path / "real"),
            "--gen",
            str(tmp_path / "gen"),
            "--metrics",
            "det",
            "--out",
            str(tmp_path / "x.json"),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
        ],
        capsys,
    )
    assert rc == 2 and "video v" in io.err and f"{T} frames" in io.err and f"{T + 1} frames" in io.err
    write_frames(tmp_path / "gen" / "v", synthetic_clip(0, T, H, W + 8).frames)
    rc, io = _run(
        [
            "--real",
            str(tmp_path / "real"),
            "--gen",
            str(tmp_path / "gen"),
            "--metrics",
            "det",
            "--out",
            str(tmp_path / "x.json"),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
        ],
        capsys,
    )
    assert rc == 2 and f"{H}x{W}" in io.err and f"{H}x{W + 8}" in io.err


def test_unreadable_video(tmp_path, cache, capsys):
    write_video(tmp_path / "real" / "v.mp4", synthetic_clip(0, T, H, W).frames)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "v.mp4").write_bytes(b"this is not an mp4 file at all")
    rc, io = _run(
        [
            "--real",
            str(tmp_path / "real"),
            "--gen",
            str(tmp_path / "gen"),
            "--metrics",
            "det",
            "--out",
            str(tmp_path / "x.json"),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
        ],
        capsys,
    )
    assert rc == 2 and "v.mp4" in io.err and "cannot be read" in io.err


def test_paper_profile_without_weights_names_the_keys(folders, tmp_path, capsys):
    rc, io = _run(
        [
            "--real",
            str(folders / "real"),
            "--gen",
            str(folders / "gen"),
            "--out",
            str(tmp_path / "x.json"),
            "--config",
            "paper",
        ],
        capsys,
    )
    assert rc == 2
    for key, hint in (
        ("fvd.weights", "i3d_torchscript.pt"),
        ("fid.weights", "weights-inception-2015-12-05"),
        ("det.detector.weights", "yolo11x.pt"),
    ):
        assert key in io.err and hint in io.err


def test_weights_pointing_nowhere(tmp_path):
    cfg = load_config("paper", [f"fvd.weights={tmp_path / 'nope.pt'}"])
    with pytest.raises(FileNotFoundError, match="fvd.weights=.*nope.pt.*no such file"):
        resolve_weights(cfg, ["fvd"])


def test_bad_override_is_a_clear_error(folders, tmp_path, capsys):
    rc, io = _run(
        [
            "--real",
            str(folders / "real"),
            "--gen",
            str(folders / "gen"),
            "--out",
            str(tmp_path / "x.json"),
            "--config",
            "smoke",
            "--set",
            "det.protocol=nope",
            "--metrics",
            "det",
            "--set",
            f"cache_dir={tmp_path / 'unused'}",
        ],
        capsys,
    )
    assert rc == 2 and "det.protocol='nope'" in io.err
    assert not (tmp_path / "unused").exists()  # failed before making any weights


def test_module_entry_point_help():
    r = subprocess.run(
        [sys.executable, "-m", "metrics.evaluate", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "--real" in r.stdout and "--protocol" in r.stdout


def test_real_dashcam_footage(tmp_path, cache, capsys):
    """The real dash-cam mp4 (960x540): frames resized for FVD/detection, videos paired by name."""
    mp4 = SHARED_DATA / "dashcam" / "solidWhiteRight.mp4"
    if not mp4.is_file():
        pytest.skip(f"real test data absent: {mp4}")
    frames = read_video(mp4, max_frames=12)
    assert frames.shape[1:] == (540, 960, 3)
    for k in range(2):
        write_video(tmp_path / "real" / f"drive{k}.mp4", frames[k * 4 : k * 4 + 4])
        write_video(tmp_path / "gen" / f"drive{k}.mp4", frames[k * 4 + 2 : k * 4 + 6])
    out = tmp_path / "m.json"
    rc, io = _run(
        [
            "--real",
            str(tmp_path / "real"),
            "--gen",
            str(tmp_path / "gen"),
            "--metrics",
            "fvd,det",
            "--out",
            str(out),
            "--config",
            "smoke",
            "--set",
            f"cache_dir={cache}",
            "--set",
            "det.frame_size=[320,512]",
            "--set",
            "det.detector.imgsz=320",
        ],
        capsys,
    )
    assert rc == 0, io.err
    res = json.loads(out.read_text())
    assert res["video_size"] == [540, 960] and res["n_videos"] == 2 and np.isfinite(res["fvd"]["value"])
    assert res["det"]["n_frames"] == 8


def test_config_accepts_backend_specific_keys(tmp_path):
    """`+key=value` adds a key the metrics YAML lacks (e.g. a DN-DETR-only setting); a user YAML may too."""
    cfg = load_config("smoke", ["+det.detector.short_edge_length=640", "det.detector.name=dn_detr"])
    assert cfg.det.detector.short_edge_length == 640 and cfg.det.detector.name == "dn_detr"
    user = tmp_path / "mine.yaml"
    user.write_text("det:\n  detector:\n    name: dn_detr\n    backend: transformers\n")
    cfg = load_config(str(user), ["++det.detector.max_det=50"])  # ++: add or override
    assert cfg.det.detector.backend == "transformers" and cfg.det.detector.max_det == 50
