"""Damage to what a store already holds is never trusted (issue 29): one test per case, the damage
sequences end to end on the smoke profile (one row of Table III at the smallest settings, the real
stage runner), sharing one finished run whose store each test copies."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

SMALL = [
    "data.height=32",
    "data.width=48",
    "data.clip_len=4",
    "data.train.num_clips=1",
    "data.test.num_clips=1",
    "metrics.metrics=[det]",
]


def _run(root: Path, said: list | None = None):
    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table
    from benchmark.trainer_runner import TrainerRunner

    return run_table(
        "III",
        HydraResolver("smoke", SMALL),
        TrainerRunner(),
        store=root / "runs",
        results=root / "results",
        rows=["hybrid"],
        figures=False,
        echo=(said.append if said is not None else lambda m: None),
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_cache):
    """One uninterrupted run: (its folder, its graph)."""
    root = tmp_path_factory.mktemp("finished")
    run = _run(root)
    return root, run.graph


def _copy(finished, tmp_path) -> Path:
    root, _ = finished
    shutil.copytree(root, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table(root: Path) -> dict:
    return json.loads((root / "results" / "smoke" / "table_III.json").read_text())


def _stage(graph, kind: str, last: bool = False):
    found = [s for s in graph.order() if s.kind == kind]
    return found[-1] if last else found[0]


def _verify(store: Path, capsys) -> str:
    from benchmark.status import main

    capsys.readouterr()
    rc = main(["--verify", f"store={store}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def test_resumed_generate_redoes_a_damaged_frame_and_never_seals_it(finished, tmp_path, capsys):
    """Case 1: a frame of a finished generate stage truncated to 100 bytes, its DONE deleted. The
    rerun kept the clip (its folder existed), sealed the 100-byte file in a new manifest and failed at
    evaluate, for good. Now the clip is generated again, the evaluate stage made from the old frames
    is recomputed, and the table is the uninterrupted run's."""
    base, graph = finished
    root = _copy(finished, tmp_path)
    gen, ev = _stage(graph, "generate"), _stage(graph, "evaluate")
    frame = root / "runs" / gen.hash / "frames" / "clip_0000" / "000001.png"
    frame.write_bytes(frame.read_bytes()[:100])
    (root / "runs" / gen.hash / "DONE").unlink()

    run = _run(root)
    assert gen.hash in run.executed and ev.hash in run.executed
    assert _sha(frame) == _sha(base / "runs" / gen.hash / frame.relative_to(root / "runs" / gen.hash))
    assert _table(root) == _table(base)
    assert "0 damaged" in _verify(root / "runs", capsys)


def test_same_size_change_to_weights_is_recomputed_with_everything_downstream(finished, tmp_path, capsys):
    """Case 2: 64 bytes XORed inside the last train stage's weights (same size) and a frame of the
    generate stage truncated. The runner checked sizes only: it kept the train stage, regenerated from
    the corrupted weights and kept the old evaluate stage. Now the train stage (its weights file was
    touched, so it is hashed) is recomputed, with the generate and evaluate stages made from it."""
    base, graph = finished
    root = _copy(finished, tmp_path)
    train = _stage(graph, "train", last=True)
    gen, ev = _stage(graph, "generate"), _stage(graph, "evaluate")
    weights = root / "runs" / train.hash / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    weights.write_bytes(bytes(data))
    frame = root / "runs" / gen.hash / "frames" / "clip_0000" / "000002.png"
    frame.write_bytes(frame.read_bytes()[:100])

    said = []
    run = _run(root, said)
    assert {train.hash, gen.hash, ev.hash} <= set(run.executed), said
    assert any(f"stage train {train.hash}" in m and "diffusion_pytorch_model.safetensors" in m for m in said), said
    assert _sha(weights) == _sha(base / "runs" / train.hash / weights.relative_to(root / "runs" / train.hash))
    assert _table(root) == _table(base)
    assert "0 damaged" in _verify(root / "runs", capsys)


def test_status_verify_marks_stages_made_from_a_damaged_one(finished, tmp_path, capsys):
    """`--verify` of a table names the damaged stage and the stages made from it, which the next run
    recomputes with it."""
    from benchmark.status import main

    _, graph = finished
    root = _copy(finished, tmp_path)
    train = _stage(graph, "train", last=True)
    weights = root / "runs" / train.hash / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    rc = main(["table=III", "rows=hybrid", *SMALL, "--verify", f"store={root / 'runs'}", f"results={root / 'results'}"])
    out = capsys.readouterr().out
    assert rc == 1, out
    lines = {ln.split()[2]: ln for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) > 2}
    assert lines[train.hash].split()[0] == "damaged", out
    for s in graph.order():
        if s.kind in ("generate", "evaluate"):
            assert lines[s.hash].split()[0] == "damaged" and "made from damaged stage" in lines[s.hash], out
    assert f"made from damaged stage {train.hash}" in lines[_stage(graph, "generate").hash]
    assert main(["--verify", f"store={root / 'runs'}"]) == 1  # the whole store: the same three
    out = capsys.readouterr().out
    assert "3 damaged" in out and f"made from damaged stage {train.hash}" in out, out


def test_commit_refuses_to_seal_a_damaged_output(tmp_path):
    """A manifest is never written over a file that does not pass its check: no MANIFEST, no DONE,
    and the error names the file."""
    from PIL import Image

    from benchmark.store import Store
    from data.cli import InputError

    class St:
        kind, hash, deps, params, rows = "generate", "abc123", (), {}, ["r"]
        config = run_cfg = {"a": 1}

    store = Store(tmp_path)
    out = store.begin(St())
    (out / "frames" / "clip_0000").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(out / "frames" / "clip_0000" / "000000.png")
    bad = out / "frames" / "clip_0000" / "000001.png"
    Image.new("RGB", (8, 8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(InputError, match=r"clip_0000/000001\.png: damaged"):
        store.commit(St(), {"frames": out / "frames"})
    assert not (out / "MANIFEST.json").exists() and not store.is_done("abc123")


def test_weights_written_through_publish_dir_follow_the_umask(tmp_path):
    """Case 7: safetensors writes its files 0600 whatever the umask; a published folder's files get
    a plain file's mode."""
    import os

    import torch
    from safetensors.torch import save_file

    from data.atomic import atomic_dir

    old = os.umask(0o002)
    try:
        with atomic_dir(tmp_path / "unet") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "diffusion_pytorch_model.safetensors"))
    finally:
        os.umask(old)
    mode = (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777
    assert oct(mode) == oct(0o664)


# ------------------------------------------------------------------------ benchmark.generate (case 3, 6)
def _fake_pipeline(monkeypatch, calls: list):
    from benchmark import generate

    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **kw: object())

    def video(pipe, frame0, gen, seed):
        calls.append(seed)
        return np.full((int(gen.num_frames), int(gen.height), int(gen.width), 3), seed % 200, np.uint8)

    monkeypatch.setattr(generate, "generate_video", video)


@pytest.mark.parametrize("damage", ["truncated mp4", "deleted frame", "truncated frame"])
def test_generate_command_rerun_redoes_damaged_outputs(tmp_path, monkeypatch, damage):
    """Case 3: a rerun of `benchmark.generate` kept a truncated mp4 and deleted or truncated frames
    (exit 0). Now what does not decode whole is made again."""
    from PIL import Image

    from benchmark.generate import run
    from data.video_io import read_video

    img = tmp_path / "a.png"
    Image.new("RGB", (48, 32), (10, 20, 30)).save(img)
    calls = []
    _fake_pipeline(monkeypatch, calls)
    kw = dict(frames=True, progress=False, overrides=["data.height=32", "data.width=48", "data.clip_len=4"])
    out = tmp_path / "out"
    run([str(img)], "tiny", out, **kw)
    assert len(calls) == 1
    mp4, folder = out / "videos" / "a.mp4", out / "frames" / "a"
    if damage == "truncated mp4":
        mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    elif damage == "deleted frame":
        sorted(folder.iterdir())[-1].unlink()
    else:
        f = sorted(folder.iterdir())[1]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    run([str(img)], "tiny", out, **kw)
    assert len(calls) == 2
    n = read_video(folder).shape[0]
    assert read_video(mp4).shape[0] == n == len(list(folder.iterdir()))
    run([str(img)], "tiny", out, **kw)
    assert len(calls) == 2  # intact outputs are kept


def test_generate_command_input_named_dots_png_is_one_line(tmp_path, capsys):
    """Case 6: an input `...png` (video name `..`) crashed with a traceback and left a temp folder."""
    from PIL import Image

    from benchmark.generate import main

    img = tmp_path / "...png"
    Image.new("RGB", (48, 32)).save(img, format="PNG")
    out = tmp_path / "out"
    assert main([str(img), "--model", "tiny", "--out", str(out), "--frames"]) == 2
    err = capsys.readouterr().err
    assert "...png" in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob(".lsa-tmp-*"))


# ------------------------------------------------------------------------ render (cases 8, 9)
def _render_fake(tmp_path, overrides=()):
    from fakes import FakeRunner

    from benchmark.config import HydraResolver
    from benchmark.run_table import run_table

    run_table(
        "III",
        HydraResolver("smoke", list(overrides)),
        FakeRunner(),
        store=tmp_path / "runs",
        results=tmp_path / "results",
        rows=["global"],
        figures=False,
        echo=lambda m: None,
    )
    return tmp_path / "results" / "smoke-fake"


def test_render_sweeps_a_killed_renders_temp(tmp_path):
    """Case 8: a render killed mid-write left `results/<profile>/.lsa-tmp-<pid>@<host>~...png`, never
    swept."""
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    out = tmp_path / "results" / "smoke-fake"
    out.mkdir(parents=True)
    left = out / f".lsa-tmp-{gone.pid}@{socket.gethostname()}~table_III_loss.png.abc123.png"
    left.write_bytes(b"half a figure")
    _render_fake(tmp_path)
    assert not left.exists()


def test_markdown_table_escapes_what_it_prints(tmp_path):
    """Case 9: the markdown table printed a description holding `<script>` raw (.html, .tex escape it)."""
    out = _render_fake(tmp_path, ["benchmark.description='<script>alert(1)</script> a|b'"])
    md = (out / "table_III.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; a\\|b" in md


# ------------------------------------------------------------------------ storage errors (cases 4, 5)
from fakes import FakeRunner  # noqa: E402


class FullDiskRunner(FakeRunner):
    """Its first train stage fails as accelerate's checkpoint does on a full disk: torch's zip writer
    raises a RuntimeError without the errno, its checkpoint temp folder left behind."""

    def run_train(self, stage, cfg, init_from, out_dir):
        left = Path(out_dir) / "checkpoints" / ".lsa-tmp-step-00000002"
        left.mkdir(parents=True)
        (left / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4096 vs 0")


def test_full_disk_is_named_failed_is_written_and_its_temps_are_swept(tmp_path, monkeypatch, capsys):
    """Case 5: a full disk ended in a traceback about torch's "unexpected pos", FAILED unwritten (the
    stage looked "still running, or killed") and the checkpoint temp folder was never swept."""
    import errno

    from benchmark.run import main
    from benchmark.status import main as status
    from data import atomic

    real = atomic.make_temp_file

    def full(path, suffix=""):  # the probe write of disk_full fails as on a full disk
        if Path(path).name == ".space-check":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, suffix)

    monkeypatch.setattr(atomic, "make_temp_file", full)
    args = ["table=V", f"store={tmp_path / 'runs'}", f"results={tmp_path / 'results'}"]
    assert main([*args, f"runner={__name__}:FullDiskRunner"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stage train ") and "no space left on device" in last, err
    assert "Traceback" not in err
    assert status(args) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " train " in ln and ln.split()[0] in ("failed", "pending"))
    assert line.split()[0] == "failed" and "no space left on device" in line, out
    temps = list((tmp_path / "runs").glob("*/checkpoints/.lsa-tmp-step-*"))
    assert len(temps) == 1

    assert main([*args, "runner=fakes:FakeRunner"]) == 0  # space freed: the rerun recovers
    assert not temps[0].exists()


def test_disk_full_reads_the_errno_through_the_chain(tmp_path):
    from data.atomic import disk_full

    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as e:
        assert disk_full(e, tmp_path)
    assert not disk_full(RuntimeError("unexpected pos 4096 vs 0"), tmp_path)  # the probe write fits here
    assert not disk_full(ValueError("no"), tmp_path)


@pytest.mark.parametrize("dry_run", [False, True])
def test_store_that_is_a_file_is_one_line_and_creates_nothing(tmp_path, capsys, dry_run):
    """Case 4: store= a file gave a traceback and exit 1 after creating the results folder; --dry-run
    exited 0."""
    from benchmark.run import main

    (tmp_path / "runs").write_text("not a folder")
    args = ["table=V", f"store={tmp_path / 'runs'}", f"results={tmp_path / 'results'}", "runner=fakes:FakeRunner"]
    assert main(args + (["--dry-run"] if dry_run else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: store=") and "a file, not a folder" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "results").exists()


def test_store_on_a_read_only_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from benchmark import run_table
    from benchmark.run import main

    def read_only(path, suffix=""):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_table, "make_temp_file", read_only)
    args = ["table=V", f"store={tmp_path / 'runs'}", f"results={tmp_path / 'results'}", "runner=fakes:FakeRunner"]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: store=") and "Read-only file system" in last
    assert not (tmp_path / "results").exists()
