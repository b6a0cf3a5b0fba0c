"""python -m benchmark.generate on a tiny trained run: playable mp4s, frame count and size, seeds,
the generate stage's code and settings, resume, and one-line errors for bad inputs."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from benchmark.generate import generate_videos, load_pipeline, main
from data.synthetic import synthetic_clip
from data.video_io import read_video
from trainers.config import load_config

RUN = [
    "model=tiny",
    "data=synthetic",
    "data.clip_len=4",
    "data.train.num_clips=1",
    "train.max_steps=1",
    "train.epochs=1",
    "schedule=diffusion",
]


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tmp_path_factory) -> Path:
    """A trained run folder (one optimizer step of the smoke profile's tiny model): config.yaml + unet/."""
    from trainers.loop import train

    out = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config(RUN + [f"train.out_dir={out}"]))
    assert (out / "unet" / "config.json").is_file()
    return out


@pytest.fixture(scope="module")
def first_frames(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("firsts")
    for i in range(2):
        Image.fromarray(synthetic_clip(i, 1, 64, 96).frames[0]).save(folder / f"street_{i}.png")
    return folder


def _h264(path: Path) -> bool:
    """ffmpeg's description of the file's first video stream names H.264 with yuv420p (what browsers play)."""
    import imageio_ffmpeg

    res = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], check=False, capture_output=True, text=True
    )
    line = next((x for x in res.stderr.splitlines() if "Video:" in x), "")
    return "h264" in line and "yuv420p" in line


def test_generate_from_run_folder(tiny_run, first_frames, tmp_path):
    out = tmp_path / "a"
    assert main([str(first_frames), "--model", str(tiny_run), "--out", str(out), "--frames"]) == 0
    doc = json.loads((out / "generation.json").read_text())
    assert doc["model"]["kind"] == "run" and doc["model"]["unet"] == str(tiny_run / "unet")
    assert {n: v["seed"] for n, v in doc["videos"].items()} == {"street_0": 0, "street_1": 1}
    for name in ("street_0", "street_1"):
        mp4 = out / "videos" / f"{name}.mp4"
        assert _h264(mp4)
        video = read_video(mp4)
        assert video.shape == (4, 64, 96, 3)  # the run's clip_len and data size
        assert read_video(out / "frames" / name).shape == (4, 64, 96, 3)

    # the generate stage's own code with the profile's settings (resolved on the run's config) gives the
    # same frames
    run_cfg = OmegaConf.load(tiny_run / "config.yaml")
    cfg = OmegaConf.merge(load_config(["+benchmark=smoke"]), {k: run_cfg[k] for k in ("model", "data", "cond")})
    pipe = load_pipeline(cfg.model, tiny_run / "unet")
    firsts = [np.asarray(Image.open(first_frames / f"street_{i}.png").convert("RGB")) for i in range(2)]
    generate_videos(pipe, firsts, ["street_0", "street_1"], cfg.benchmark.generate, tmp_path / "stage")
    for name in ("street_0", "street_1"):
        assert np.array_equal(read_video(tmp_path / "stage" / "frames" / name), read_video(out / "frames" / name))

    # a rerun skips what is there; the same seed in another folder gives the same frames, another seed not
    before = (out / "videos" / "street_0.mp4").stat().st_mtime_ns
    assert main([str(first_frames), "--model", str(tiny_run), "--out", str(out), "--frames"]) == 0
    assert (out / "videos" / "street_0.mp4").stat().st_mtime_ns == before
    one = str(first_frames / "street_1.png")
    assert main([one, "--model", str(tiny_run), "--out", str(tmp_path / "b"), "--frames", "--seed", "1"]) == 0
    assert np.array_equal(read_video(tmp_path / "b" / "frames" / "street_1"), read_video(out / "frames" / "street_1"))
    assert main([one, "--model", str(tiny_run), "--out", str(tmp_path / "c"), "--frames", "--seed", "7"]) == 0
    assert not np.array_equal(
        read_video(tmp_path / "c" / "frames" / "street_1"), read_video(out / "frames" / "street_1")
    )
    # the same folder with another seed is refused (its videos were made otherwise)
    assert main([one, "--model", str(tiny_run), "--out", str(tmp_path / "b"), "--seed", "3"]) == 2


def test_exported_unet_folder_and_testset_folder(tiny_run, first_frames, tmp_path):
    """<run>/unet brings the run's config along; a testset stage folder stands for its first_frames/."""
    stage = tmp_path / "testset"
    shutil.copytree(first_frames, stage / "first_frames")
    assert (
        main(
            [
                str(stage),
                "--model",
                str(tiny_run / "unet"),
                "--out",
                str(tmp_path / "u"),
                "benchmark.generate.num_frames=3",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "u" / "generation.json").read_text())
    assert doc["model"]["kind"] == "unet" and doc["settings"]["num_frames"] == 3
    assert sorted(doc["videos"]) == ["street_0", "street_1"] and doc["videos"]["street_0"]["frames"] is None
    assert read_video(tmp_path / "u" / "videos" / "street_0.mp4").shape == (3, 64, 96, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--model", "{run}", "--out", "{out}"], "no such file or folder"),
        (["{run}/config.yaml", "--model", "{run}", "--out", "{out}"], "not an image"),
        (["{img}", "--model", "{tmp}/nothing", "--out", "{out}"], "no such folder, and not a hub id"),
        (["{img}", "--model", "{run}/log.jsonl", "--out", "{out}"], "a file; give a run folder"),
        (["{img}", "--model", "{run}"], "--out required"),
        (["--model", "{run}", "--out", "{out}"], "no inputs"),
        (["{img}", "--model", "{run}", "--out", "{out}", "--profile", "huge"], "--profile huge: unknown"),
        (["{img}", "--model", "{run}", "--out", "{out}", "--bogus"], "unrecognized arguments: --bogus"),
        (["{img}", "{img}", "--model", "{run}", "--out", "{out}"], "both give a video named"),
    ],
)
def test_bad_inputs_are_one_line_errors(tiny_run, first_frames, tmp_path, capsys, args, message):
    subs = {
        "missing": tmp_path / "absent.png",
        "run": tiny_run,
        "out": tmp_path / "o",
        "tmp": tmp_path,
        "img": first_frames / "street_0.png",
    }
    assert main([a.format(**subs) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o" / "videos").exists()


def test_test_clip_list(tiny_run, tmp_path):
    """A test_clips.json of a folder dataset: its clips' first frames, named as the testset stage names them,
    at the list's clip length; data=... on the command line takes the place of the run's data."""
    from data.registry import build_dataset

    root = tmp_path / "videos"
    for v, color in (("drive_a", (200, 40, 40)), ("drive_b", (40, 40, 200))):
        (root / v).mkdir(parents=True)
        for f in range(6):
            Image.new("RGB", (80, 60), (color[0], 10 * f, color[2])).save(root / v / f"{f:03d}.png")
    data = [
        f"data.root={root}",
        "data.test.videos=[drive_a,drive_b]",
        "data.height=64",
        "data.width=96",
        f"data.cache.dir={tmp_path / 'cache'}",
    ]
    cfg = load_config(["data=folder", "data.clip_len=3", "data.test.num_clips=2", *data])
    clips = build_dataset(cfg.data, "test")  # writes the test list, as the testset stage does
    (listed,) = (tmp_path / "cache" / "test_clips").glob("folder-*.json")
    out = tmp_path / "gen"
    assert main([str(listed), "--model", str(tiny_run), "--out", str(out), "--frames", "data=folder", *data]) == 0
    doc = json.loads((out / "generation.json").read_text())
    assert sorted(doc["videos"]) == ["clip_0000", "clip_0001"] and doc["settings"]["num_frames"] == 3
    assert doc["videos"]["clip_0001"]["input"] == f"{listed}: clips[1]"
    assert read_video(out / "videos" / "clip_0000.mp4").shape == (3, 64, 96, 3)
    # the conditioning frame was that clip's first frame: the run with one image of it gives the same video
    Image.fromarray(clips[1].frames[0]).save(tmp_path / "first.png")
    assert (
        main(
            [
                str(tmp_path / "first.png"),
                "--model",
                str(tiny_run),
                "--out",
                str(tmp_path / "one"),
                "--frames",
                "--seed",
                "1",
                "benchmark.generate.num_frames=3",
            ]
        )
        == 0
    )
    assert np.array_equal(read_video(tmp_path / "one" / "frames" / "first"), read_video(out / "frames" / "clip_0001"))
    # a list of another dataset than the config's is a one-line error naming the fix
    assert main([str(listed), "--model", str(tiny_run), "--out", str(tmp_path / "x")]) == 2
