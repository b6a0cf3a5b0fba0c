"""Faults and bad inputs (docs/benchmark.md "Faults and bad inputs"): each test is one case, killed
writers, two runs at once, damaged files, and the one error policy of every command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.atomic import atomic_dir, data_entries, is_temp, sweep_temps

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **kw.pop("env", {})}
    return subprocess.run([PY, *args], cwd=kw.pop("cwd", ROOT), env=env, capture_output=True, text=True, **kw)


def _kill_inside_atomic_dir(target: Path) -> None:
    """A process killed with SIGKILL while its atomic_dir writes `target` (half the frames written)."""
    code = (
        "import os, sys\nfrom data.atomic import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    open(os.path.join(tmp, '000000.png'), 'wb').write(b'half')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    r = _run(["-c", code, str(target)])
    assert r.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------ 1. a killed folder writer
def test_killed_folder_writer_leftovers_are_not_clips_and_are_swept(tmp_path, monkeypatch):
    """A SIGKILL inside the atomic folder writer leaves a hidden temp folder beside the clips: the
    evaluate stage must not take it for a clip, and the next writer of that clip sweeps it."""
    from benchmark.trainer_runner import TrainerRunner

    real, gen = tmp_path / "real" / "frames", tmp_path / "gen" / "frames"
    for d in (real, gen):
        for name in ("clip_0000", "clip_0001"):
            with atomic_dir(d / name) as tmp:
                (tmp / "000000.png").write_bytes(b"x")
    _kill_inside_atomic_dir(real / "clip_0002")
    left = [p for p in real.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and is_temp(left[0]), list(real.iterdir())
    assert [p.name for p in data_entries(real, dirs=True)] == ["clip_0000", "clip_0001"]

    seen = {}

    def fake_evaluate(real_videos, gen_videos, cfg, names, detections_dir, per_video=None):
        seen["names"] = names
        return {"n_videos": len(names)}

    monkeypatch.setattr("metrics.evaluate.evaluate", fake_evaluate)
    TrainerRunner().run_evaluate(None, {}, gen, tmp_path / "out", real_dir=real)
    assert seen["names"] == ["clip_0000", "clip_0001"]

    # the next write of that clip (a rerun of the stage) sweeps the dead writer's temp folder
    with atomic_dir(real / "clip_0002") as tmp:
        (tmp / "000000.png").write_bytes(b"x")
    assert sorted(p.name for p in real.iterdir()) == ["clip_0000", "clip_0001", "clip_0002"]


def test_stage_start_sweeps_dead_temps_but_not_live_ones(tmp_path):
    """The store sweeps a resumed stage folder: temp entries of dead writers go, those of a live
    writer (another shard, another run) stay."""
    from benchmark.stages import Stage
    from benchmark.store import Store

    store = Store(tmp_path / "runs")
    stage = Stage("testset", "abc123", {"k": 1}, {"k": 1}, (), {}, ["row"])
    out = store.begin(stage)
    _kill_inside_atomic_dir(out / "frames" / "clip_0000")
    live = out / "frames" / f".lsa-tmp-{os.getpid()}@{os.uname().nodename}~clip_0001.abcd"
    live.mkdir()
    store.begin(stage)
    assert [p.name for p in (out / "frames").iterdir()] == [live.name]
    assert sweep_temps(out / "frames") == []


# ------------------------------------------------------------------------ 2. two runs rendering at once
def test_two_renders_of_one_figure_at_once_both_succeed(tmp_path):
    """Run B saves the figure while run A is between its savefig and its rename (as two processes
    rendering one table interleave): with a shared temp name A's rename failed."""
    from benchmark import figures

    plt = figures._plt()
    out = tmp_path / "table_III_loss.png"
    fig_a, fig_b = plt.figure(), plt.figure()
    fig_a.add_subplot().plot([0, 1], [1, 0])
    fig_b.add_subplot().plot([0, 1], [0, 1])
    savefig = fig_a.savefig

    def savefig_then_other_run(*args, **kw):
        savefig(*args, **kw)
        figures._save(fig_b, out)  # the other run, complete, in between

    fig_a.savefig = savefig_then_other_run
    assert figures._save(fig_a, out) == out
    assert out.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == [out.name]


# ------------------------------------------------------------------------ 3. one error policy (and Ctrl-C)
from fakes import FakeRunner  # noqa: E402

from data.cli import UserError  # noqa: E402


class _Raising(FakeRunner):
    """Its first stage (the test set) raises `error`."""

    error: BaseException = RuntimeError("boom")

    def run_testset(self, stage, cfg, out_dir):
        raise self.error


class OSErrorRunner(_Raising):
    error = FileNotFoundError(2, "No such file or directory", "/somewhere/deep/inside.bin")


class UserErrorRunner(_Raising):
    error = UserError("data.root=/nope: no such folder")


class CtrlCRunner(_Raising):
    error = KeyboardInterrupt()


class RuntimeErrorRunner(_Raising):
    error = RuntimeError("the GPU caught fire")


def _bench(tmp_path, runner, *extra):
    return [
        "table=V",
        f"store={tmp_path / 'runs'}",
        f"results={tmp_path / 'results'}",
        f"runner={__name__}:{runner}",
        *extra,
    ]


def test_run_keeps_tracebacks_of_unexpected_errors_and_one_line_for_user_errors(tmp_path, capsys):
    """An OSError from a stage was printed as `error: 2` (exit 2): it is not a user error, so it
    keeps its traceback (it propagates: exit 1). A UserError is one line, exit 2."""
    from benchmark.run import main

    with pytest.raises(FileNotFoundError, match="inside.bin"):
        main(_bench(tmp_path, "OSErrorRunner"))
    capsys.readouterr()
    assert main(_bench(tmp_path, "UserErrorRunner")) == 2
    err = capsys.readouterr().err  # the progress logged before the stage ran, then the error line
    assert err.strip().splitlines()[-1] == "error: data.root=/nope: no such folder"
    assert "Traceback" not in err and err.count("error:") == 1


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys):
    from benchmark.run import main

    assert main(_bench(tmp_path, "CtrlCRunner")) == 130
    err = capsys.readouterr().err.strip().splitlines()  # logged progress, then one line
    assert err[-1] == "interrupted (Ctrl-C)" and not any("Traceback" in ln for ln in err), err
    assert all(" INFO " in ln or " WARNING " in ln for ln in err[:-1]), err  # only logged status before it


def test_metrics_evaluate_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch, capsys):
    """metrics.evaluate turned every ValueError / KeyError / RuntimeError into `error: ...`, exit 2:
    a KeyError from deep inside is a bug and must keep its traceback."""
    from data.video_io import write_frames
    from metrics import evaluate as ev

    for side in ("real", "gen"):
        for k in range(2):
            write_frames(tmp_path / side / f"v{k}", np.zeros((2, 8, 8, 3), np.uint8))

    def broken(*a, **kw):
        raise KeyError("some_internal_key")

    monkeypatch.setattr(ev, "evaluate", broken)
    with pytest.raises(KeyError, match="some_internal_key"):
        ev.main(
            [
                "--real",
                str(tmp_path / "real"),
                "--gen",
                str(tmp_path / "gen"),
                "--out",
                str(tmp_path / "o.json"),
                "--config",
                "smoke",
            ]
        )


# ------------------------------------------------------------------------ 5. empty or damaged frame images
@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8], ids=["0-byte", "corrupt"])
def test_damaged_png_is_a_clear_error_naming_the_file(tmp_path, content):
    """With ultralytics imported (the detector), PIL.Image.open on a bad file ended in
    ModuleNotFoundError: pi_heif; now the evaluation's reader names the file."""
    import ultralytics.utils.patches  # noqa: F401  (patches PIL.Image.open, as the YOLO detector does)

    from data.cli import InputError
    from data.video_io import write_frames
    from metrics.evaluate import _load

    clip = write_frames(tmp_path / "gen" / "clip_0000", np.zeros((3, 8, 8, 3), np.uint8))
    (clip / "000001.png").write_bytes(content)
    with pytest.raises(InputError, match=r"clip_0000/000001\.png: (empty|damaged)"):
        _load(clip, "clip_0000 (generated)")


# ------------------------------------------------------------------------ 6. a truncated mp4
def test_truncated_mp4_is_an_error_not_a_shorter_video(tmp_path, shared_data):
    """A byte cut of a 221-frame mp4 whose header survives decodes as a shorter video: reported."""
    from data.cli import InputError
    from data.video_io import read_video

    src = shared_data / "dashcam" / "solidWhiteRight.mp4"
    cut = tmp_path / "solidWhiteRight.mp4"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"solidWhiteRight\.mp4: truncated .*decoded, but the file declares 221"):
        read_video(cut)
    assert read_video(cut, max_frames=5).shape[0] == 5  # asking for the first frames is fine


# ------------------------------------------------------------------------ 9. a torn last line of log.jsonl
def _log_owner(tmp_path, text: str, step: int):
    from types import SimpleNamespace

    path = tmp_path / "log.jsonl"
    path.write_text(text)
    printed = []
    return SimpleNamespace(
        log_path=path, state={"global_step": step}, say=lambda message, level=None: printed.append(message)
    ), printed


def test_resume_drops_a_torn_last_log_line_and_names_other_bad_lines(tmp_path):
    from data.cli import InputError
    from trainers.loop import Trainer

    good = "".join(f'{{"step": {s}, "loss": 0.5}}\n' for s in (1, 2, 3))
    owner, printed = _log_owner(tmp_path, good + '{"step": 4, "lo', step=2)
    Trainer._truncate_log(owner)
    assert owner.log_path.read_text() == good.rsplit("\n", 2)[0] + "\n"  # steps 1, 2
    assert len(printed) == 1 and "log.jsonl:4: dropped a torn last line" in printed[0]

    owner, _ = _log_owner(tmp_path, '{"step": 1}\n{"st\n{"step": 2}\n', step=2)
    with pytest.raises(InputError, match=r"log\.jsonl:2: not a training log record"):
        Trainer._truncate_log(owner)


# ------------------------------------------------------------------------ 4. the converter's advice works
def test_trust_pickle_advice_names_what_each_command_accepts(tmp_path, capsys):
    """A detrex .pth holding a Python object beyond tensors: the error advises --trust-pickle, and
    following the advice works with the converter, with metrics.evaluate (which rejected the flag)
    and with benchmark.run's config route (which refused det.detector.trust_pickle)."""
    import argparse
    import re

    import torch
    from test_metrics_dn_detr import TINY, make_reference

    from benchmark.config import HydraResolver
    from benchmark.stages import select
    from data.video_io import write_frames
    from metrics.detectors.convert_dn_detr import main as convert
    from metrics.evaluate import main as evaluate

    ckpt = tmp_path / "dn_detr_tiny.pth"
    torch.save({"model": make_reference().state_dict(), "cfg": argparse.Namespace(lr=1e-4)}, ckpt)
    heads = str(TINY.heads)

    assert convert([str(ckpt), str(tmp_path / "conv"), "--num-heads", heads]) == 2
    advice = capsys.readouterr().err
    assert "rerun with --trust-pickle" in advice and "python -m metrics.evaluate" in advice
    assert convert([str(ckpt), str(tmp_path / "conv"), "--num-heads", heads, "--trust-pickle"]) == 0

    for side in ("real", "gen"):
        write_frames(tmp_path / side / "v", np.full((2, 64, 96, 3), 128, np.uint8))
    args = [
        "--real",
        str(tmp_path / "real"),
        "--gen",
        str(tmp_path / "gen"),
        "--out",
        str(tmp_path / "m.json"),
        "--config",
        "smoke",
        "--metrics",
        "det",
        "--detector",
        "dn_detr",
        "--detector-weights",
        str(ckpt),
        "--quiet",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        f"+det.detector.num_heads={heads}",
        "--set",
        "+det.detector.cache_dir=" + str(tmp_path / "cache"),
        "--set",
        "+det.detector.short_edge_length=64",
        "--set",
        "+det.detector.max_size=96",
    ]
    capsys.readouterr()
    assert evaluate(args) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert evaluate(args + ["--trust-pickle"]) == 0, capsys.readouterr().err

    route = re.search(r"benchmark\.run: add (\S+?)\)", advice).group(1)
    cfg = HydraResolver("smoke", [route]).resolve([])
    assert select(cfg, "metrics.det.detector.trust_pickle") is True


# ------------------------------------------------------------------------ 11. status, file modes, results/
def test_status_shows_a_stage_that_raised_as_failed(tmp_path, capsys):
    from benchmark.run import main as run
    from benchmark.status import main as status

    with pytest.raises(RuntimeError, match="caught fire"):
        run(_bench(tmp_path, "RuntimeErrorRunner"))
    capsys.readouterr()
    assert status(["table=V", f"store={tmp_path / 'runs'}", f"results={tmp_path / 'results'}"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " testset " in ln)
    assert line.split()[0] == "failed" and "RuntimeError: the GPU caught fire" in line, out
    assert "still running, or killed" not in line


def test_records_tables_and_folders_respect_the_umask(tmp_path):
    """mkstemp / mkdtemp made records 0600 and folders 0700; with umask 002 a group shares them."""
    from benchmark import figures
    from data.atomic import atomic_write_json
    from data.video_io import write_frames

    old = os.umask(0o002)
    try:
        rec = atomic_write_json(tmp_path / "result.json", {"a": 1})
        clip = write_frames(tmp_path / "frames" / "clip_0000", np.zeros((1, 4, 4, 3), np.uint8))
        fig = figures._plt().figure()
        png = figures._save(fig, tmp_path / "table_III_loss.png")
    finally:
        os.umask(old)
    assert oct(rec.stat().st_mode & 0o777) == oct(0o664)
    assert oct(png.stat().st_mode & 0o777) == oct(0o664)
    assert oct(clip.stat().st_mode & 0o777) == oct(0o775)


def test_unwritable_results_folder_is_found_before_the_first_stage(tmp_path, capsys):
    from benchmark.run import main

    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    assert main(_bench(tmp_path, "RuntimeErrorRunner")) == 2  # the runner would raise if a stage ran
    err = capsys.readouterr().err
    assert "results=" in err and "not writable" in err and "nothing was started" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/stage.json"))
