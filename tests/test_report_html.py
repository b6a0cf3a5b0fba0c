"""The HTML report of a table (benchmark/report.py): content, links, H.264 assets, boxes drawn, and the
page in a real headless Chromium (no console errors, every video playable, a screenshot)."""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _chromium import Chromium, find_chromium

from ablations.registry import load_table
from data.video_io import read_video

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found ($LSA_CHROMIUM, or chromium on "
    "PATH; Debian: apt-get install -y chromium); .ci/run installs it",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Table III on the FakeRunner (real files, placeholder numbers), rendered again after the hybrid row's
    evaluate stage got a detections file (the fake runner writes none)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fakes import FakeRunner

    from benchmark.config import HydraResolver
    from benchmark.render import render
    from benchmark.run_table import run_table
    from benchmark.store import Store

    tmp = tmp_path_factory.mktemp("report")
    run = run_table(
        "III", HydraResolver("smoke"), FakeRunner(), store=tmp / "runs", results=tmp / "results", echo=lambda s: None
    )
    hybrid = next(p for p in run.graph.rows if p.row.name == "hybrid")
    det_dir = Store(tmp / "runs").dir(hybrid.evaluate["dn_detr"]) / "detections"
    det_dir.mkdir()
    frames = [{"boxes": [[4.0, 3.0, 14.0, 12.0], [0.0, 0.0, 2.0, 2.0]], "scores": [0.9, 0.1], "labels": [2, 2]}] * 3
    (det_dir / "clip_0000.json").write_text(json.dumps({"frames": frames}))
    outputs = render(run.graph, Store(tmp / "runs"), run.results_dir, fake=True)
    return outputs, run


def _ffmpeg_video_line(path: Path) -> str:
    import imageio_ffmpeg

    res = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], check=False, capture_output=True, text=True
    )
    return next((x for x in res.stderr.splitlines() if "Video:" in x), "")


def test_report_files_and_content(report):
    outputs, run = report
    html_path, assets = outputs["html"], outputs["html_assets"]
    assert html_path == run.results_dir / "table_III.html" and assets == run.results_dir / "table_III_assets"
    page = html_path.read_text()
    spec = load_table("III")
    doc = json.loads(outputs["json"].read_text())
    for r, row in zip(doc["rows"], spec.rows):  # our numbers and the paper's, row by row
        assert f"id='row-{row.name}'" in page
        for c in spec.columns:
            assert r["cells"][c.id]["ours_text"] in page and row.paper[c.id].text in page
    assert "FAKE RUNNER" in page  # the profile note travels with the page
    # every relative link and source points at something that exists
    refs = re.findall(r"(?:href|src)='([^']+)'", page)
    assert refs and all((html_path.parent / ref).exists() for ref in refs), [
        r for r in refs if not (html_path.parent / r).exists()
    ]
    for plan in run.graph.rows:  # each row links its stage folders
        for h in [plan.testset, *plan.train, plan.generate, *plan.evaluate.values()]:
            assert re.search(rf"href='[^']*/{h}/'", page), h
    for fig in ("table_III_loss.png", "table_III_per_frame.png", "table_III_frames.png"):
        assert f"src='{fig}'" in page
    assert page.count("<tr><td>") >= len(run.graph.stages)  # the provenance table: one line per stage
    # the videos: 2 clips x (real + 4 rows), H.264 yuv420p, 192 wide (benchmark.report.width), 3 frames
    videos = re.findall(r"<video src='table_III_assets/([^']+)'", page)
    assert len(videos) == 10 and sorted(videos) == sorted(p.name for p in assets.iterdir())
    for name in videos:
        line = _ffmpeg_video_line(assets / name)
        assert "h264" in line and "yuv420p" in line, line
        assert read_video(assets / name).shape == (3, 128, 192, 3)
    # detections are drawn (and named) where an evaluate stage wrote them: only the hybrid row here
    assert page.count("(dn_detr detections)") == 1
    assert "SVD + LSA (Ours) / Hybrid (Global + localized) (dn_detr detections)" in page


def test_boxes_are_drawn_scaled():
    from benchmark.report import RED, _draw

    frames = np.zeros((2, 16, 24, 3), np.uint8)
    out = _draw(frames, [[[6, 4, 18, 12]], []], RED, 48)  # 2x: box edges at x 12 / 36, y 8 / 24
    assert out.shape == (2, 32, 48, 3)
    assert tuple(out[0, 8, 20]) == RED and tuple(out[0, 16, 12]) == RED and tuple(out[0, 16, 20]) == (0, 0, 0)
    assert not out[1].any()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium")
    with Chromium(CHROMIUM) as b:
        yield b


@needs_chromium
def test_report_in_headless_chromium(report, browser, tmp_path):
    outputs, _ = report
    page = browser.open(outputs["html"].resolve().as_uri())
    states = page.wait_videos(timeout=60)
    assert len(states) == 10
    assert all(s["readyState"] >= 3 and s["error"] is None and s["width"] == 192 for s in states), states
    assert page.console_errors() == []
    shot = page.screenshot(tmp_path / "table_III.png")
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[1] == browser.width and img.shape[0] > 1000 and img.std() > 10  # a drawn page, not blank
    print(f"screenshot: {shot}")


@needs_chromium
def test_the_browser_check_catches_broken_pages(browser, tmp_path):
    """The checks above can fail: a console error and an undecodable video are reported."""
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 50)
    (tmp_path / "bad.html").write_text(
        "<!DOCTYPE html><html><body><video src='bad.mp4' preload=auto></video>"
        "<script>console.error('boom')</script></body></html>"
    )
    page = browser.open((tmp_path / "bad.html").as_uri())
    states = page.wait_videos(timeout=20)
    assert states[0]["readyState"] < 3 and states[0]["error"]
    assert any("boom" in e for e in page.console_errors())
